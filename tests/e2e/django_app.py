"""A Django project in one file: Django's own ASGI handler behind AutoMigrateMiddleware.

Django's handler refuses the lifespan scope; the middleware completes the
lifespan for it. AM_INI names the alembic.ini, DATABASE_URL the database.
"""

from __future__ import annotations

import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    SECRET_KEY="only-for-this-test",
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402 - after settings
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

from automigrator import AutoMigrateMiddleware, AutoMigrator  # noqa: E402

migrator = AutoMigrator(os.environ["AM_INI"], url=os.environ["DATABASE_URL"])


def status(request: HttpRequest) -> JsonResponse:
    return JsonResponse(migrator.status.to_dict())


urlpatterns = [path("status", status)]

app = AutoMigrateMiddleware(get_asgi_application(), migrator=migrator, health_path="/health")
