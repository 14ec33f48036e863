"""Settings: the sample file is complete and valid; bad values fail with one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest
from twisted.python import usage

from relay.config import SECTIONS, ConfigError, RelayConfig, load_config
from relay.tap import Options

SAMPLE = Path(__file__).parent.parent / "etc" / "relay.toml"


def test_sample_config_documents_every_setting_with_its_default():
    data = tomllib.loads(SAMPLE.read_text())
    assert set(data) == set(SECTIONS)
    for name, cls in SECTIONS.items():
        assert set(data[name]) == {f.name for f in attrs.fields(cls)}, name
    assert load_config(SAMPLE) == RelayConfig()


@pytest.mark.parametrize("text, message", [
    ("[mailbox]\ndifficulty = -1\n", "difficulty"),
    ("[mailbox]\nsession_timeout = 0\n", "session_timeout"),
    ("[store]\nurl = 'mysql://x'\n", "store url"),
    ("[nope]\n", "unknown section"),
    ("[http]\nport = 1\n", "unknown setting [http] port"),
    ("[http\n", "not valid TOML"),
    ("[files]\nmax_chunk_size = 900000\n", "max_chunk_size"),
    ("[rendezvous]\ndata_path = 'zero'\n", "data_path must be 'splice' or 'copy'"),
    ("[files]\nchunk_store = 's3'\n", "chunk_store must be"),
])
def test_bad_settings_fail_with_one_line(tmp_path, text, message):
    path = tmp_path / "relay.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_options_override_the_file(tmp_path):
    path = tmp_path / "relay.toml"
    path.write_text("[mailbox]\ndifficulty = 3\n[http]\nendpoint = 'tcp:1'\n")
    options = Options()
    options.parseOptions(["--config", str(path), "--difficulty", "5"])
    assert options.relay_config.mailbox.difficulty == 5
    assert options.relay_config.http.endpoint == "tcp:1"


def test_bad_option_is_a_usage_error():
    with pytest.raises(usage.UsageError, match="difficulty"):
        Options().parseOptions(["--difficulty", "lots"])
    with pytest.raises(usage.UsageError, match="cannot read"):
        Options().parseOptions(["--config", "/nonexistent/relay.toml"])


def test_twistd_prints_one_line_not_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "relay", "--difficulty", "99"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert "difficulty must be a whole number from 0 to 64" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr + result.stdout
