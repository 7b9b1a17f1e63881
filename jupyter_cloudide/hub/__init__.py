"""The JupyterHub-managed service of jupyter_cloudide: team usage and team budgets.

User servers report their ledger rows here (``metering/hub_sync.py``) and fetch the team
budgets of their user's groups with the spend of the other members; Hub admins get a page
and a JSON report per user and group. Start it with ``python -m jupyter_cloudide.hub``
(docs/hub.md). Nothing here is imported by the server extension.
"""
