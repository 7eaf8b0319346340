"""Tables and detail views for people (``--output table``). User text is never markup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from keyturn.domain.text import escape_controls

#: longest command shown in ``keyturn sessions list`` (``sessions show`` has all of it)
COMMAND_COLUMN = 40


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
            r["status"] + (" BREAK-GLASS" if r.get("break_glass") else ""),
            r["decision"]["rule"],
            r["created_at"],
        )
    con.print(table)


def request_detail(con: Console, r: dict[str, Any], *, cert_path: Path | None) -> None:
    """One access request, its decision (with the rule trace), reviews and grant."""
    d = r["decision"]
    flag = "  BREAK-GLASS (review skipped)" if r.get("break_glass") else ""
    con.print(f"request    {r['id']}  ({r['status']}){flag}")
    con.print(f"requester  {r['requester']}  role {r['role']} on {r['target']} for {r['duration']}")
    con.print(
        f"why        {r['justification']}" + (f"  [ticket {r['ticket']}]" if r["ticket"] else "")
    )
    if r.get("start_at"):
        con.print(f"starts     {r['start_at']} (scheduled; checked again at the start)")
    explanation(con, d, facts=False)
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


def explanation(con: Console, d: dict[str, Any], *, facts: bool) -> None:
    """A decision: (facts,) each rule evaluated in order with matched or not and why, the
    outcome. Used by ``requests show`` and ``policy explain``."""
    if facts:
        f = d["facts"]
        req, tgt = f["requester"], f["target"]
        con.print("facts")
        con.print(f"  requester  {req['id']} groups {', '.join(req['groups']) or '-'}")
        schedules = ", ".join(req.get("on_call_schedules", [])) or "-"
        con.print(f"  on call    {req.get('on_call', False)} (schedules: {schedules})")
        names = ", ".join(
            f"{a['name']}[{a['severity'] or '-'}] since {a['since']}" for a in tgt.get("alerts", [])
        )
        con.print(f"  target     {tgt['name']} alerting {tgt.get('alerting', False)} {names}")
        con.print(f"  role       {f['role']['name']} (tier {f['role']['tier']})")
        hist = f.get("history", {})
        con.print(
            f"  history    {hist.get('requests_7d', 0)} request(s), "
            f"{hist.get('hours_elevated_7d', 0)} h elevated in 7 days"
        )
        con.print(f"  now        {f['now']['timestamp']} (hour {f['now']['hour']})")
    trace = d.get("trace", [])
    if trace:  # a break-glass decision evaluated no rule: no empty "rules" heading
        con.print("rules")
    for step in trace:
        mark = "MATCHED " if step["matched"] else "no match"
        con.print(f"  {mark} {step['rule']}: {step.get('why', step.get('error', ''))}")
        for clause in step.get("clauses", []):
            con.print(f"             {clause['value']:<13} {clause['expr']}")
    con.print(f"decision   {d['outcome']} by rule {d['rule']}: {'; '.join(d['reasons'])}")


def always_on_table(con: Console, data: dict[str, Any]) -> None:
    """``keyturn report always-on``."""
    rule = data["definition"]
    con.print(
        f"working hours {rule['start']}-{rule['end']} on days {rule['workdays']} "
        f"({rule['timezone']}), window {rule['window']}, listed at >= {rule['threshold']:.0%}"
    )
    table = _table("user", "role", "coverage", "elevated h", "working h", "days", "grants")
    for row in data["items"]:
        table.add_row(
            row["user"],
            row["role"],
            f"{row['coverage']:.0%}",
            f"{row['elevated_working_hours']:.1f}",
            f"{row['working_hours']:.1f}",
            str(row["days_elevated"]),
            str(row["grants"]),
        )
    con.print(table)


def alerts_table(con: Console, data: dict[str, Any]) -> None:
    """``keyturn alerts``."""
    table = _table("status", "name", "severity", "targets", "since", "source")
    for a in data["items"]:
        table.add_row(
            a["status"],
            a["name"],
            a["severity"] or "",
            ", ".join(a["targets"]) or "(no target)",
            a["starts_at"],
            a["source"],
        )
    con.print(table)


def policy_test_report(con: Console, data: dict[str, Any]) -> None:
    """``keyturn policy test``: one line per case, then the totals."""
    for case in data["cases"]:
        mark = "PASS" if case["passed"] else "FAIL"
        con.print(f"{mark}  {case['name']}  ({case['outcome']} by {case['rule']})")
        for mismatch in case["mismatches"]:
            con.print(f"      {mismatch}")
    con.print(f"{data['passed']} passed, {data['failed']} failed")


def reload_result(con: Console, data: dict[str, Any]) -> None:
    """``keyturn config reload``."""
    if data.get("applied"):
        con.print(f"reloaded: {data['old_sha256'][:12]} -> {data['new_sha256'][:12]}")
    else:
        con.print(f"refused: {data.get('reason')} (the old configuration stays)")


def grant_detail(con: Console, g: dict[str, Any]) -> None:
    """One grant."""
    flag = "  BREAK-GLASS" if g.get("break_glass") else ""
    con.print(f"grant      {g['id']}  ({g['status']})  {g['not_before']} → {g['not_after']}{flag}")
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
            g["status"] + (" BREAK-GLASS" if g.get("break_glass") else ""),
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


def reviews_table(con: Console, data: dict[str, Any]) -> None:
    """``keyturn reviews``: post-incident reviews of break-glass uses."""
    table = _table("ID", "MODE", "USER", "ROLE", "TARGET", "USED", "DUE", "STATUS", "VERDICT")
    for r in data["items"]:
        status = r["status"] + (" OVERDUE" if r["overdue"] else "")
        table.add_row(
            r["id"],
            r["mode"],
            r["user"],
            r["role"],
            r["target"],
            r["used_at"],
            r["due_at"],
            status,
            r["verdict"] or "",
        )
    con.print(table)


def review_detail(con: Console, r: dict[str, Any]) -> None:
    """One post-incident review."""
    overdue = " OVERDUE" if r["overdue"] else ""
    con.print(f"review     {r['id']}  ({r['status']}{overdue})  due {r['due_at']}")
    con.print(f"break-glass {r['mode']} by {r['user']}: {r['role']} on {r['target']}")
    con.print(f"used at    {r['used_at']}")
    con.print(f"why        {r['justification']}")
    if r.get("grant_id"):
        con.print(f"grant      {r['grant_id']}")
    if r.get("record_id"):
        con.print(
            f"record     {r['record_id']} (kit {r['kit_id']}), imported by {r['imported_by']}"
        )
    for finding in r.get("findings", []):
        con.print(f"FINDING    {finding}")
    if r["status"] == "closed":
        con.print(f"verdict    {r['verdict']} by {r['closed_by']} at {r['closed_at']}")
        con.print(f"comment    {r['comment']}")


def break_glass_result(con: Console, data: dict[str, Any], *, cert_path: Path | None) -> None:
    """``keyturn break-glass ROLE``: the grant, and the review that is now open."""
    request_detail(con, data["request"], cert_path=cert_path)
    review = data["review"]
    con.print(
        f"This use was announced to the role's approvers and security. Post-incident review "
        f"{review['id']} is due {review['due_at']}."
    )


def break_glass_report(con: Console, data: dict[str, Any]) -> None:
    """``keyturn report break-glass``."""
    t = data["totals"]
    con.print(
        f"break-glass uses {t['uses']} (online {t['online']}, offline {t['offline']}); reviews "
        f"open {t['open']}, overdue {t['overdue']}, justified {t['justified']}, unjustified "
        f"{t['unjustified']}"
    )
    kit_status(con, data["kit"])
    reviews_table(con, {"items": data["reviews"]})


def kit_status(con: Console, data: dict[str, Any]) -> None:
    """The offline kit's state."""
    if data["state"] == "none":
        con.print("offline kit: none (make one: keyturn break-glass kit create)")
        return
    note = "  USED: rotate it (keyturn break-glass kit rotate)" if data["state"] == "spent" else ""
    con.print(
        f"offline kit: {data['kit_id']} {data['state']} ({data['threshold']} of "
        f"{data['shares']} shares; {data['fingerprint']}){note}"
    )


def kit_shares(con: Console, data: dict[str, Any]) -> None:
    """``keyturn break-glass kit create|rotate``: the shares, once, for paper."""
    kit = data["kit"]
    con.print(
        f"Offline break-glass kit {kit['kit_id']} ({kit['fingerprint']}): any "
        f"{kit['threshold']} of these {kit['shares']} shares rebuild its key."
    )
    con.print(
        "Write each share on paper for one custodian and seal it in an envelope. They are shown "
        "ONCE and stored nowhere; clear this terminal afterwards."
    )
    for number, share in enumerate(data["shares"], start=1):
        words = share.split()
        con.print(f"\nshare {number} of {len(data['shares'])}:")
        for row in range(0, len(words), 6):
            cells = [f"{row + i + 1:>2}. {w:<10}" for i, w in enumerate(words[row : row + 6])]
            con.print("  " + " ".join(cells).rstrip())
    con.print(f"\npublic kit description written to {data['kit_path']} (no secret in it)")
    con.print("targets must trust its CA line next to Keyturn's: GET /v1/ssh/ca serves both.")


def _command(text: str | None, width: int | None = None) -> str:
    """A recorded command for a terminal: control characters made visible, cut to ``width``."""
    if text is None:
        return ""
    shown = escape_controls(text)
    return shown if width is None or len(shown) <= width else shown[: width - 1] + "…"


def _ending(s: dict[str, Any]) -> str:
    if s["status"] == "live":
        return "LIVE"
    exit_status = f", exit {s['exit_status']}" if s["exit_status"] is not None else ""
    return f"ended {s['ended_at']}: {s['end_reason']}{exit_status}"


def session_table(con: Console, data: dict[str, Any]) -> None:
    """``keyturn sessions list``: one row per session; ``ENDED`` says LIVE while it runs."""
    table = _table(
        "ID", "USER", "ROLE", "TARGET", "KIND", "STARTED", "ENDED", "REASON", "EXIT", "COMMAND"
    )
    for s in data["items"]:
        table.add_row(
            s["id"],
            s["user_id"],
            s["role"],
            s["target"],
            s["kind"],
            s["started_at"],
            s["ended_at"] or "LIVE",
            s["end_reason"] or "",
            "" if s["exit_status"] is None else str(s["exit_status"]),
            _command(s["command"], COMMAND_COLUMN),
        )
    con.print(table)


def session_detail(con: Console, s: dict[str, Any]) -> None:
    """``keyturn sessions show``: the record, the recording, the best-effort command log."""
    con.print(f"session    {s['id']}  ({_ending(s)})")
    con.print(f"who        {s['user_id']} as {s['role']} on {s['target']} from {s['client']}")
    con.print(f"grant      {s['grant_id']}  (request {s['request_id']})")
    command = f": {_command(s['command'])}" if s["command"] is not None else ""
    con.print(f"kind       {s['kind']}{command}")
    con.print(f"started    {s['started_at']}")
    digest = (
        f"{s['recording_bytes']} bytes, sha256 {s['recording_sha256']}"
        if s["recording_sha256"]
        else "no hash chained yet"
    )
    con.print(f"recording  {s['recording']}  ({digest})")
    con.print(f"           replay: keyturn sessions play {s['id']}")
    con.print(
        "best-effort command log (lines seen typed and echoed; the recording is authoritative)"
    )
    for entry in s["commands"]:
        con.print(f"  {_command(entry['command'])}")
    if not s["commands"]:
        con.print("  (none seen)")


def session_export(con: Console, d: dict[str, Any]) -> None:
    """``keyturn sessions export``: what was written, and whether it is the chained recording."""
    con.print(f"wrote {d['path']}  ({d['bytes']} bytes, sha256 {d['sha256']})")
    if d["matches_chain"] is None:
        con.print("no hash was chained for this recording yet (the session is live)")
    elif d["matches_chain"]:
        con.print("it matches the hash chained in the audit trail when the session ended")
    else:
        con.print(
            f"IT DOES NOT MATCH the hash chained when the session ended ({d['chained_sha256']})"
        )
