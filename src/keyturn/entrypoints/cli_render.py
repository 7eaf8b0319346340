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
    if g.get("privilege"):
        con.print(f"privilege  {g['privilege']}")
    if g.get("last_error"):
        retry = (
            f" (attempt {g['attempts']}, next retry {g['retry_at']})" if g.get("retry_at") else ""
        )
        con.print(f"last error {g['last_error']}{retry}")


def grant_table(con: Console, data: dict[str, Any]) -> None:
    """``keyturn grants``."""
    table = _table("ID", "USER", "ROLE", "TARGET", "STATUS", "NOT AFTER", "ENDED", "LAST ERROR")
    for g in data["items"]:
        table.add_row(
            g["id"],
            g["user"],
            g["role"],
            g["target"],
            g["status"],
            g["not_after"],
            g["end_reason"] or "",
            g["last_error"] or "",
        )
    con.print(table)


def reconcile(con: Console, data: dict[str, Any]) -> None:
    """``keyturn reconcile``."""
    mode = "dry run: nothing changed" if data["dry_run"] else "done"
    con.print(f"reconciliation at {data['at']} ({mode})")
    table = _table("KIND", "PRIVILEGE", "MEMBER", "USER", "ACTION")
    for f in data["findings"]:
        table.add_row(f["kind"], f["privilege"], f["identity"], f["user_id"] or "-", f["action"])
    if data["findings"]:
        con.print(table)
    else:
        con.print("no findings: every member has a live grant or is allowlisted")
    for privilege, count in data["standing"].items():
        con.print(f"standing privileges in {privilege}: {count}")
    for error in data["errors"]:
        con.print(f"ERROR {error}")


def standing(con: Console, data: dict[str, Any]) -> None:
    """``keyturn report standing``."""
    if not data["privileges"]:
        con.print("no snapshots yet: run `keyturn reconcile` (the worker does every 5 minutes)")
        return
    for p in data["privileges"]:
        con.print(f"{p['privilege']} ({p['provider']}): {p['count']} standing at {p['taken_at']}")
        for member in p["members"]:
            con.print(f"  - {member}")
    table = _table("TAKEN AT", "PRIVILEGE", "STANDING")
    for h in data["history"]:
        table.add_row(h["taken_at"], h["privilege"], str(h["count"]))
    con.print("count over time:")
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
