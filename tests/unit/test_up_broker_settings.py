"""``cityanchor up``'s broker persistence and queue settings (issue 11): a periodic save every
second by default, saving on every change only when asked, a queue bound of 1,000,000."""

from __future__ import annotations

from pathlib import Path

import pytest

import anchor.cli.up
from anchor.cli.commands import main
from anchor.cli.up import UpOptions, broker_settings
from anchor.errors import UsageError
from anchor.local import MosquittoServer


def _conf(tmp_path: Path, opts: UpOptions) -> dict[str, str]:
    server = MosquittoServer(tmp_path / "mq", port=1883, **broker_settings(opts))
    return dict(
        line.partition(" ")[::2] for line in server._config_text().splitlines() if line[:1] != "#"
    )


def test_the_default_is_a_periodic_save_every_second_and_a_large_queue(tmp_path: Path) -> None:
    conf = _conf(tmp_path, UpOptions(data_dir=tmp_path))
    assert conf["autosave_interval"] == "1"
    # Never on every change: every queued message is a change and each save rewrites the backlog.
    assert "autosave_on_changes" not in conf
    assert conf["max_queued_messages"] == "1000000"


def test_saving_after_n_changes_is_an_explicit_opt_in(tmp_path: Path) -> None:
    conf = _conf(tmp_path, UpOptions(data_dir=tmp_path, broker_autosave_changes=100))
    assert conf["autosave_on_changes"] == "true" and conf["autosave_interval"] == "100"


@pytest.mark.parametrize(
    "field",
    ["broker_autosave_interval_s", "broker_autosave_changes", "broker_max_queued_messages"],
)
def test_settings_below_one_are_refused(tmp_path: Path, field: str) -> None:
    with pytest.raises(UsageError, match="at least 1"):
        UpOptions(data_dir=tmp_path, **{field: 0})


def test_cli_flags_reach_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[UpOptions] = []
    monkeypatch.setattr(anchor.cli.up, "run_up", lambda opts: seen.append(opts) or 0)
    assert main(["up", "--data-dir", str(tmp_path)]) == 0
    assert broker_settings(seen[0])["autosave_interval"] == 1
    assert seen[0].broker_autosave_changes is None
    argv = ["up", "--data-dir", str(tmp_path), "--broker-autosave-interval", "5"]
    argv += ["--broker-autosave-changes", "10", "--broker-max-queued", "2000"]
    assert main(argv) == 0
    assert broker_settings(seen[1]) == {
        "autosave_interval": 5,
        "autosave_changes": 10,
        "max_queued_messages": 2000,
        "session_expiry_cap_h": 24,
    }
    assert main(["up", "--data-dir", str(tmp_path), "--broker-autosave-interval", "0"]) != 0
