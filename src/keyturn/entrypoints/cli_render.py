"""Tables and detail views for people (``--output table``). User text is never markup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _table(*columns: str) -> Table:
    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def request_table(con: Console, data: dict[str, Any]) -> None:
    """``keyturn requests``."""
    table = _table("ID", "REQUESTER", "ROLE", "TARGET", "FOR", "STATUS", "RULE", "CREATED")
    for r in data["items"]:
        table.add_row(
            r["id"],
            r["requester"],
            r["role"],
            r["target"],
            r["duration"],
            r["status"],
            r["decision"]["rule"],
            r["created_at"],
        )
    con.print(table)


def request_detail(con: Console, r: dict[str, Any], *, cert_path: Path | None) -> None:
    """One access request, its decision (with the rule trace), reviews and grant."""
    d = r["decision"]
    con.print(f"request    {r['id']}  ({r['status']})")
    con.print(f"requester  {r['requester']}  role {r['role']} on {r['target']} for {r['duration']}")
    con.print(
        f"why        {r['justification']}" + (f"  [ticket {r['ticket']}]" if r["ticket"] else "")
    )
    con.print(f"decision   {d['outcome']} by rule {d['rule']}: {'; '.join(d['reasons'])}")
    for step in d.get("trace", []):
        mark = "matched" if step["matched"] else "no match"
        con.print(
            f"  - {step['rule']}: {mark}" + (f" ({step['error']})" if step.get("error") else "")
        )
    if d["outcome"] == "require_approval":
        who = ", ".join(d["approvers"]["users"] + [f"group:{g}" for g in d["approvers"]["groups"]])
        con.print(
            f"approvals  {sum(x['verdict'] == 'approve' for x in r['reviews'])}/{d['approvals']} "
            f"from {who}"
        )
    for rev in r["reviews"]:
        con.print(
            f"review     {rev['reviewer']}: {rev['verdict']}"
            + (f" — {rev['comment']}" if rev["comment"] else "")
        )
    if r.get("grant"):
        grant_detail(con, r["grant"])
    if cert_path is not None:
        con.print(f"certificate written to {cert_path}")


def grant_detail(con: Console, g: dict[str, Any]) -> None:
    """One grant."""
    con.print(f"grant      {g['id']}  ({g['status']})  {g['not_before']} → {g['not_after']}")
    if g.get("serial") is not None:
        con.print(f"serial     {g['serial']}")
    if g.get("end_reason"):
        con.print(f"ended      {g['end_reason']} by {g['ended_by']} at {g['ended_at']}")
    if g.get("last_error"):
        con.print(f"last error {g['last_error']}")


def grant_table(con: Console, data: dict[str, Any]) -> None:
    """``keyturn grants``."""
    table = _table("ID", "USER", "ROLE", "TARGET", "STATUS", "NOT AFTER", "ENDED")
    for g in data["items"]:
        table.add_row(
            g["id"],
            g["user"],
            g["role"],
            g["target"],
            g["status"],
            g["not_after"],
            g["end_reason"] or "",
        )
    con.print(table)


def audit_table(con: Console, data: dict[str, Any]) -> None:
    """``keyturn audit list``."""
    table = _table("SEQ", "AT", "ACTOR", "ACTION", "SUBJECT", "HASH")
    for e in data["items"]:
        subject = " ".join(f"{k}={v}" for k, v in e["subject"].items())
        table.add_row(str(e["seq"]), e["at"], e["actor"], e["action"], subject, e["hash"][:12])
    con.print(table)


def verify(con: Console, data: dict[str, Any]) -> None:
    """``keyturn audit verify``."""
    if data["ok"]:
        con.print(f"audit chain ok: {data['events']} events, head {data['head_hash'][:16]}…")
    else:
        con.print(
            f"AUDIT CHAIN BROKEN at sequence {data['first_bad_seq']}: {data['reason']} "
            f"({data['events']} events read)"
        )


def whoami(con: Console, data: dict[str, Any]) -> None:
    """``keyturn whoami``."""
    groups = ", ".join(data["groups"]) or "-"
    con.print(f"{data['id']} ({data['name']}); groups: {groups}; admin: {data['admin']}")
