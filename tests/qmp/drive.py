#!/usr/bin/env python3
"""Drives Papervisor over QMP with the unmodified `qemu.qmp` client.

Usage: drive.py SOCKET STEP...
A STEP is a command name, or NAME=JSON-ARGUMENTS, or `wait-event:NAME`.
Prints one JSON line per step: {"return": ...}, {"error": {"class", "desc"}}
or {"event": ...}. Exits 3 if qemu.qmp is missing, 1 on a connection failure.
"""
import asyncio
import json
import sys

try:
    from qemu.qmp import ExecuteError, QMPClient
except ImportError:
    print("qemu.qmp is not installed: pip install qemu.qmp", file=sys.stderr)
    sys.exit(3)


async def run(socket, steps):
    client = QMPClient("papervisor-test")
    await client.connect(socket)
    events = client.events
    for step in steps:
        if step.startswith("wait-event:"):
            name = step.split(":", 1)[1]
            event = await asyncio.wait_for(events.get(), timeout=30)
            while event["event"] != name:
                event = await asyncio.wait_for(events.get(), timeout=30)
            print(json.dumps({"event": event["event"], "data": event.get("data", {})}), flush=True)
            continue
        name, _, arguments = step.partition("=")
        arguments = json.loads(arguments) if arguments else None
        try:
            result = await client.execute(name, arguments)
            print(json.dumps({"return": result}), flush=True)
        except ExecuteError as error:
            print(json.dumps({"error": {"class": error.error_class, "desc": str(error)}}), flush=True)
    try:
        await client.disconnect()
    except Exception:  # the VM may be gone after quit
        pass


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    asyncio.run(run(sys.argv[1], sys.argv[2:]))


if __name__ == "__main__":
    main()
