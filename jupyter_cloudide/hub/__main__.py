"""``python -m jupyter_cloudide.hub``: run the hub service (the Hub starts it as a managed
service)."""

from .app import main

if __name__ == "__main__":
    main()
