"""WSGI entry point for gunicorn: `gunicorn service.wsgi:app` (settings from LANTERN_* variables)."""
from service.app import create_app
from service.cli import setup_logging
from service.config import Settings

settings = Settings.from_env()
setup_logging(settings)
app = create_app(settings)
