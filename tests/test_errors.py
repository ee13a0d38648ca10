"""The error tree (issue 12 item 4): one base, every class in hil/errors.py, typed fields that
survive a process boundary."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from pathlib import Path

import pytest

import hil
from hil import errors
from hil.agent.protocol import Status
from hil.errors import (
    AccessDeniedError,
    AgentRefusedError,
    DeviceMissingError,
    ExprError,
    HilError,
    JournalError,
    MemoryRangeError,
    ProtocolError,
    ScriptLimitError,
    WideAccessError,
    error_from_record,
    error_record,
)
from hil.script import load_script
from hil.workers import run_on_backends

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(hil.__path__, "hil.")]
    return [n for n in names if not n.endswith("__main__")]


def test_every_exception_class_of_the_package_is_a_hil_error_defined_in_hil_errors():
    outside, not_ours = [], []
    for name in _modules():
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__.startswith("hil"):
                if obj.__module__ != "hil.errors":
                    outside.append(f"{name}.{attr}")
                elif not issubclass(obj, HilError):
                    not_ours.append(f"{name}.{attr}")
    assert outside == [] and not_ours == []


def test_the_old_import_paths_name_the_same_classes():
    moved = {
        "hil.agent.protocol": ["ProtocolError"], "hil.agent.links": ["LinkError"], "hil.allowlist": ["AllowListError"],
        "hil.agent.client": ["AgentError", "AgentTimeoutError", "AgentResetError", "AgentRefusedError",
                               "AgentAccessDenied"],
        "hil.backends.qemu": ["QemuNotFoundError", "QemuVersionError", "QemuStartError"],
        "hil.backends.qtest": ["QtestError", "QemuExitedError"], "hil.cli": ["UsageError"],
        "hil.buffers": ["ZoneConfigError", "InvalidRequestError", "ZoneTooSmallError", "ZoneExhaustedError",
                        "DoubleFreeError", "ForeignBufferError", "ReservedBufferError"],
        "hil.diff": ["DeviationFileError"], "hil.dma": ["FlipFlopError", "InvalidModeError", "LockError"],
        "hil.journal": ["JournalError"], "hil.script.expr": ["ExprError", "ExprLimitError"],
        "hil.script.model": ["ScriptError", "ScriptSyntaxError", "ScriptStructureError", "ScriptTypeError",
                             "ScriptRangeError", "ScriptNameError", "ScriptIncludeError", "ScriptFileError",
                             "ScriptLimitError", "ScriptCapabilityError"],
    }
    for module, names in moved.items():
        for name in names:
            assert getattr(importlib.import_module(module), name) is getattr(errors, name), (module, name)


@pytest.mark.parametrize("cls", [ProtocolError, JournalError, ExprError])
def test_former_value_errors_are_hil_errors_only(cls):
    assert issubclass(cls, HilError) and not issubclass(cls, ValueError)


def test_one_class_per_refusal_keeps_the_broader_except_clauses_working():
    """The refusal classes sit under AccessDeniedError, so code that caught the old, broader
    class of devport's or the agent's refusals still catches them."""
    assert issubclass(WideAccessError, AccessDeniedError) and issubclass(MemoryRangeError, AccessDeniedError)
    assert errors.AgentAccessDenied is AccessDeniedError


def test_a_record_brings_back_the_class_the_message_and_the_fields():
    limit = ScriptLimitError("s.toml", "3", "data", "too big", limit="bytes", maximum=1 << 20)
    back = error_from_record(json.loads(json.dumps(error_record(limit))))
    assert type(back) is ScriptLimitError and str(back) == str(limit)
    assert (back.file, back.step, back.key, back.limit, back.maximum) == ("s.toml", "3", "data", "bytes", 1 << 20)
    refused = error_from_record(json.loads(json.dumps(error_record(AgentRefusedError(Status.AUTH, 0xFFFF, "token")))))
    assert type(refused) is AgentRefusedError and Status(refused.status) is Status.AUTH


@pytest.mark.parametrize("record", [{"type": "SystemExit", "message": "m"}, {"type": "ValueError", "message": "m"},
                                    {"type": "error_record", "message": "m"}, {"message": "m"}])
def test_a_record_naming_no_class_of_ours_is_a_plain_hil_error(record):
    back = error_from_record(record)
    assert type(back) is HilError and str(back) == "m"


@pytest.mark.parametrize("record", [None, [], {"type": "HilError"}, {"message": 3}])
def test_a_malformed_record_is_a_hil_error_that_says_so(record):
    back = error_from_record(record)
    assert type(back) is HilError and str(back).startswith("malformed error record")


async def test_a_workers_error_comes_back_typed_not_scraped(tmp_path: Path) -> None:
    """The worker fails opening devport (no such node): the parent gets the DeviceMissingError
    itself, fields and all, from the worker's record."""
    script = load_script(ROOT / "configs" / "scripts" / "verify-mode.toml")
    url = f"devport:?port={tmp_path}/no-port&mem={tmp_path}/no-mem"
    found: dict[int, HilError] = {}
    grid = await run_on_backends([script], [url], journal_dir=tmp_path / "j", errors=found)
    assert grid == [[None]]
    err = found[0]
    assert isinstance(err, DeviceMissingError) and type(err) is DeviceMissingError
    assert err.path == f"{tmp_path}/no-port" and err.errno == 2 and "CONFIG_DEVPORT" in err.fix


def test_a_usage_error_is_recorded_too(tmp_path: Path) -> None:
    """Even an error argparse finds reaches the parent typed (hil.workers passes --error-file first)."""
    from hil.cli import main

    record = tmp_path / "error.json"
    with pytest.raises(SystemExit):
        main(["--error-file", str(record), "run"])
    back = error_from_record(json.loads(record.read_text(encoding="utf-8")))
    assert type(back) is errors.UsageError and "SCRIPT" in str(back)
