"""Alerts: rules in ``alerts:`` that watch customers and act while they are still there.

* :mod:`.settings`: the configuration section (rules, webhooks), validated once.
* :mod:`.conditions`: which customers each condition matches now.
* :mod:`.decide`: fire / clear / baseline, once per customer per rule until it clears.
* :mod:`.deliver`: the alerts' outbox: claim, send (signed webhook POST, Slack message,
  HubSpot task, Zendesk note), mark, with backoff, and the audit log.
* :mod:`.messages`: what an alert says.
* :mod:`.run`: the scheduler's ``alerts`` job and ``cx-connector alerts check``.
* :mod:`.status`: what the CLI (and the admin pages) show: active alerts, failed deliveries.

Nothing here is imported by the web app: alerts are evaluated and sent in the clock
process only, never inside a webhook request.
"""
