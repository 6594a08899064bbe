"""Where API keys come from: ``--api-key``, ``--api-key-file`` and ``RAWSTREAM_API_KEYS``.

All three add up into ``Config.api_key``; a key source that cannot be used stops the
start with exit code 2 and a message naming it, never quoting a key file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rawstream.cli import build_parser, config_from_args, main


def keys(argv: list[str], environ: dict[str, str] | None = None) -> tuple[str, ...]:
    args = build_parser().parse_args(["serve", *argv])
    return config_from_args(args, environ or {}).api_key


def test_no_source_means_no_keys() -> None:
    assert keys([]) == ()


def test_a_key_file_holds_one_key_a_line(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("\ufeff# production\nsk-a\n\n   \n  sk-b\t\r\n#sk-commented\nsk-c")
    assert keys(["--api-key-file", str(path)]) == ("sk-a", "sk-b", "sk-c")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sk-a", ("sk-a",)),
        ("sk-a,sk-b", ("sk-a", "sk-b")),
        (" sk-a , sk-b\nsk-c\tsk-d ", ("sk-a", "sk-b", "sk-c", "sk-d")),
        (",,sk-a,,", ("sk-a",)),
    ],
)
def test_the_environment_separates_keys_by_commas_or_whitespace(
    value: str, expected: tuple[str, ...]
) -> None:
    assert keys([], {"RAWSTREAM_API_KEYS": value}) == expected


def test_every_source_adds_up_in_order_without_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("sk-file\nsk-flag\n")
    environ = {"RAWSTREAM_API_KEYS": "sk-env,sk-file"}
    argv = ["--api-key", "sk-flag", "--api-key-file", str(path)]
    assert keys(argv, environ) == ("sk-flag", "sk-file", "sk-env")


def _start_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--engine", "fake", *argv])
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_a_missing_key_file_is_a_start_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "missing"
    err = _start_error(["--api-key-file", str(path)], capsys)
    assert f"--api-key-file {path}: cannot read it (No such file or directory)" in err


def test_a_directory_is_no_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _start_error(["--api-key-file", str(tmp_path)], capsys)
    assert f"--api-key-file {tmp_path}: cannot read it" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no key in it"),
        (b"# only a comment: sk-secret-looking\n\n", "no key in it"),
        (b"sk-ok\nsk-secret with a space\n", "line 2: a key cannot contain whitespace"),
        (b"sk-secret-\xff\n", "not UTF-8 text"),
    ],
)
def test_an_unusable_key_file_is_named_but_never_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = tmp_path / "keys"
    path.write_bytes(content)
    err = _start_error(["--api-key-file", str(path)], capsys)
    assert f"--api-key-file {path}" in err and message in err
    assert "secret" not in err and "sk-ok" not in err


def test_a_huge_key_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"k" * (1024 * 1024 + 1))
    err = _start_error(["--api-key-file", str(path)], capsys)
    assert "larger than 1048576 bytes" in err


def test_an_empty_environment_variable_is_a_start_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAWSTREAM_API_KEYS", " , ")
    err = _start_error([], capsys)
    assert "RAWSTREAM_API_KEYS is set but holds no key" in err


def test_an_empty_api_key_flag_is_a_start_error(capsys: pytest.CaptureFixture[str]) -> None:
    err = _start_error(["--api-key", ""], capsys)
    assert "--api-key must not be empty" in err


def test_the_help_names_the_environment_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "RAWSTREAM_API_KEYS" in capsys.readouterr().out
