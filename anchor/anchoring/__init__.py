"""The anchoring job: one root per period on chain; chain back-ends; back-end construction."""
