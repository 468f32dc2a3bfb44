"""``cx-connector forget`` and ``cx-connector export``: privacy requests on demand.

The same erasure and export that Shopify's compliance webhooks and platform
deletions trigger (:mod:`cx_connector.privacy`), for a request that reached you
another way (an email to your support, a HubSpot-only contact).
"""

from __future__ import annotations

from pathlib import Path

import click

from cx_connector import db, privacy
from cx_connector.cli.base import State, emit_json, pass_state
from cx_connector.wording import counted

WHO_HELP = ("WHO is a customer id, an email address, a phone number, or SOURCE:ID for a "
            "platform record (e.g. shopify:7064055069 or hubspot:512).")


@click.command("forget", epilog=WHO_HELP)
@click.argument("who")
@click.option("--yes", is_flag=True, help="Erase without asking for confirmation.")
@click.option("--reason", default="erasure request", show_default=True,
              help="Recorded in the audit log (write no personal data here).")
@pass_state
def forget(state: State, who: str, yes: bool, reason: str) -> None:
    """Erase a person's personal data (GDPR right to erasure).

    Removes their email, phone and name, their identities, the raw webhook bodies
    that mention them and pending score writes; keeps anonymous aggregates
    (touchpoint kinds, times, values, products, scores) so KPIs stay right. The
    erasure is audit-logged without personal data. It cannot be undone.
    """
    rt = state.runtime()
    target = privacy.target_from_ref(who)
    with db.read(rt.engine) as conn:
        person, dids, n_tps = privacy.plan(conn, target)
    if not person.rows and not dids:
        with db.write(rt.engine) as conn:  # recorded all the same: the request was handled
            privacy.forget(conn, target, now=rt.now(), actor="cli", reason=reason)
        click.echo(f"nothing is held about {who}: no customer and no stored delivery mentions it "
                   "(recorded in the audit log)")
        return
    click.echo(f"{who}: {counted(len(person.survivors), 'customer')} "
               f"({', '.join(str(c) for c in sorted(person.survivors)) or 'none'}), "
               f"{counted(len(person.records), 'platform record')}, "
               f"{counted(n_tps, 'touchpoint')} to anonymise, {counted(len(dids), 'raw delivery')} to erase")
    if not yes:
        click.confirm("Erase this person's personal data? This cannot be undone", abort=True)
    with db.write(rt.engine) as conn:
        result = privacy.forget(conn, target, now=rt.now(), actor="cli", reason=reason)
    click.echo(f"erased: {counted(len(result.customers), 'customer row')}, "
               f"{counted(result.identities, 'identity')}, {counted(result.deliveries, 'raw delivery')}, "
               f"{counted(result.writes, 'pending write')}; {counted(result.touchpoints, 'touchpoint')} "
               "kept anonymous")


@click.command("export", epilog=WHO_HELP)
@click.argument("who")
@click.option("--output", "-o", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write to this file instead of a new file in privacy.export_dir ('-': stdout).")
@click.option("--request-id", default=None, help="Your reference for the request (audit log).")
@pass_state
def export(state: State, who: str, output: str | None, request_id: str | None) -> None:
    """Export everything held about a person (GDPR right of access) as one JSON file.

    Profile, identities, touchpoints, scores and their history, write-back records,
    audit entries and the raw webhook deliveries. The file is readable by its owner
    only; hand it to the person (for Shopify: to the store owner). Audit-logged.
    """
    rt = state.runtime()
    target = privacy.target_from_ref(who)
    out_path = None if output is None else Path(output)
    if out_path is not None and output != "-" and out_path.exists():
        raise click.BadParameter(f"{output} exists: choose a new file name", param_hint="--output")
    with db.write(rt.engine) as conn:
        path, document = privacy.export(conn, target, now=rt.now(), actor="cli",
                                        export_dir=rt.config.privacy.export_dir,
                                        request_id=request_id, output=out_path)
    if path is None:
        emit_json(document)
        return
    held = document["customers"]
    if not held:
        click.echo(f"nothing is held about {who} beyond "
                   f"{counted(len(document['raw_deliveries']), 'raw delivery')}; the file says so: {path}")
    else:
        click.echo(f"exported {counted(len(held), 'customer')}, "
                   f"{counted(sum(len(c['touchpoints']) for c in held), 'touchpoint')}, "
                   f"{counted(len(document['raw_deliveries']), 'raw delivery')} to {path}")
