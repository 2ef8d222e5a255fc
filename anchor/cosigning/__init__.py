"""The log side of witnessing (C2SP tlog-witness): asking witnesses to cosign checkpoints.

:mod:`.client` speaks ``add-checkpoint`` to one witness (with the 409 retry) and stores the
verified cosignatures; :mod:`.job` runs it in the anchoring process (the one leader): in mode
``seal`` it follows every new checkpoint, in mode ``anchor`` only the ones about to be
anchored, and with a quorum it decides which checkpoint the anchoring job may anchor.
"""
