"""Protocol adapters for non-standard model services (entry point group
``jupyter_cloudide.adapters``; see the /v1 issue)."""
