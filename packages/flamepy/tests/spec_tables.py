"""Parse the message, enum and RPC tables of ``shared/spec/flame-wire.md``.

Used by the descriptor test, so that the check follows the spec text itself.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SpecField:
    name: str
    number: int
    type: str
    label: str  # "", "optional", "repeated"


@dataclass
class SpecMessage:
    name: str
    fields: list[SpecField] = field(default_factory=list)
    reserved_numbers: list[int] = field(default_factory=list)
    reserved_names: list[str] = field(default_factory=list)
    absent_numbers: list[int] = field(default_factory=list)


@dataclass
class SpecRpc:
    service: str
    name: str
    request: str
    response: str
    server_streaming: bool


def spec_dir() -> Path | None:
    env = os.environ.get("FLAME_SPEC_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "spec"
        if (candidate / "flame-wire.md").is_file():
            return candidate
    return None


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(text: str) -> tuple[dict[str, SpecMessage], dict[str, dict[str, int]], list[SpecRpc]]:
    messages: dict[str, SpecMessage] = {}
    enums: dict[str, dict[str, int]] = {}
    rpcs: list[SpecRpc] = []
    lines = text.splitlines()
    current: list[str] = []
    section = ""
    for i, line in enumerate(lines):
        if line.startswith("## "):
            section = line
            current = []
            continue
        heading = line.strip()
        if heading.startswith("**") and "**" in heading[2:]:
            names = re.findall(r"\*\*([A-Za-z]+)\*\*", heading.split(":")[0])
            nxt = next((ln for ln in lines[i + 1 : i + 4] if ln.strip()), "")
            if "no fields" in heading:
                for n in names:
                    messages[n] = SpecMessage(n)
                current = []
            elif nxt.startswith("| Field"):
                current = names
                for n in names:
                    messages[n] = SpecMessage(n)
            else:
                current = []
            continue
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| Field"):
            continue
        cells = _cells(line)
        if current and len(cells) >= 4:
            name, number, typ, label = cells[:4]
            for msg_name in current:
                msg = messages[msg_name]
                if name.startswith("*(reserved)"):
                    msg.reserved_numbers.append(int(number))
                    m = re.search(r"name `([a-z_]+)`", label)
                    if m:
                        msg.reserved_names.append(m.group(1))
                elif name.startswith("*(none)"):
                    msg.absent_numbers.append(int(number))
                else:
                    msg.fields.append(SpecField(name, int(number), typ, label))
        elif section.startswith("## 2. Enums") and len(cells) >= 2 and cells[0] != "Enum":
            enums[cells[0]] = {
                k.strip(): int(v) for k, v in (p.split("=") for p in cells[1].split(","))
            }
        elif section.startswith("## 1. Frontend") and len(cells) >= 4 and cells[0] not in ("RPC",):
            if cells[1].endswith("Request") or cells[1] in ("SessionContext",):
                rpcs.append(
                    SpecRpc(
                        "Frontend", cells[0], cells[1], cells[2], cells[3] == "server-streaming"
                    )
                )
        elif section.startswith("## 4. Instance") and len(cells) >= 3 and cells[0].startswith("On"):
            rpcs.append(SpecRpc("Instance", cells[0], cells[1], cells[2], False))
    return messages, enums, rpcs
