"""Settings for Data Rsync, read from the environment (see `.env.example`).

Every value has a safe default for a laptop; production sets `DJANGO_DEBUG=false` and then
the secrets below have no defaults and must be given (directly or as `*_FILE`).
"""

from __future__ import annotations

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("RSYNC_RUN_DIR", BASE_DIR / ".run"))

env = environ.Env()
environ.Env.read_env(os.environ.get("RSYNC_ENV_FILE", BASE_DIR / ".env"))


def _secret(name: str, dev_default: str | None = None) -> str:
    """A secret from `NAME`, or from the file named by `NAME_FILE` (container secrets)."""
    file_name = os.environ.get(f"{name}_FILE")
    if file_name:
        return Path(file_name).read_text().strip()
    value = os.environ.get(name)
    if value:
        return value
    if DEBUG and dev_default is not None:
        return dev_default
    raise environ.ImproperlyConfigured(f"Set the {name} environment variable (or {name}_FILE).")


DEBUG = env.bool("DJANGO_DEBUG", default=True)
SECRET_KEY = _secret("DJANGO_SECRET_KEY", dev_default="dev-only-insecure-secret-key")
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "django_celery_beat",
    "guardian",
    "accounts",
    "audit",
    "datasources",
    "tasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "audit.context.AuditContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "console:dashboard"
LOGOUT_REDIRECT_URL = "login"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]

ROOT_URLCONF = "rsync_admin.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "rsync_admin.wsgi.application"
ASGI_APPLICATION = "rsync_admin.asgi.application"

# SQLite by default; PostgreSQL or MySQL through DATABASE_URL.
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process, workers and `run_task` share the file: WAL lets readers and one writer
    # work at once, and IMMEDIATE transactions wait for the lock instead of failing mid-way.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    if os.environ.get("RSYNC_TEST_DATABASE"):
        DATABASES["default"]["TEST"] = {"NAME": os.environ["RSYNC_TEST_DATABASE"]}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.mysql":
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("charset", "utf8mb4")
    try:
        import MySQLdb  # noqa: F401 -- mysqlclient, when installed, is Django's own choice
    except ImportError:
        # PyMySQL is already a requirement (the binlog reader uses it) and needs no C compiler.
        import pymysql

        pymysql.install_as_MySQLdb()

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = env.path("STATIC_ROOT", default=str(RUN_DIR / "static"))

# Redis serves as Celery broker, Channels layer, runner locks and embedding cache.
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = False  # a sync run is long: redelivery is the reconciler's job, not the broker's
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 12 * 3600}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "reconcile-tasks": {"task": "tasks.reconcile_tasks", "schedule": env.float("RSYNC_RECONCILE_EVERY", 30.0)},
}
CELERY_TIMEZONE = TIME_ZONE

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {"hosts": [REDIS_URL]},
    }
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "rsync_admin.api.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Data Rsync API",
    "DESCRIPTION": "Sources, vector stores, sync tasks and their runs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Served from our own static files: the docs page works without internet access.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Secrets at rest: "id=fernet-key" pairs, comma separated; the first one encrypts.
# In DEBUG a development key is generated under RUN_DIR on first use.
RSYNC_ENCRYPTION_KEYS = env.list("RSYNC_ENCRYPTION_KEYS", default=[])
if not RSYNC_ENCRYPTION_KEYS and os.environ.get("RSYNC_ENCRYPTION_KEYS_FILE"):
    RSYNC_ENCRYPTION_KEYS = _secret("RSYNC_ENCRYPTION_KEYS").replace("\n", ",").split(",")
if not RSYNC_ENCRYPTION_KEYS and not DEBUG:
    raise environ.ImproperlyConfigured("Set RSYNC_ENCRYPTION_KEYS (or RSYNC_ENCRYPTION_KEYS_FILE).")

# Behind a reverse proxy that sets X-Forwarded-For, audit entries record the client's address.
RSYNC_TRUST_X_FORWARDED_FOR = env.bool("RSYNC_TRUST_X_FORWARDED_FOR", default=False)

# Sign-in throttling: this many failures per user name (four times as many per address) lock
# further attempts for the window.
RSYNC_LOGIN_MAX_FAILURES = env.int("RSYNC_LOGIN_MAX_FAILURES", default=5)
RSYNC_LOGIN_WINDOW = env.int("RSYNC_LOGIN_WINDOW", default=15 * 60)

# Cookies and headers. Behind HTTPS set RSYNC_HTTPS=true: secure cookies, HSTS, redirects.
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if env.bool("RSYNC_HTTPS", default=False):
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = env.bool("RSYNC_SSL_REDIRECT", default=True)
    SECURE_HSTS_SECONDS = env.int("RSYNC_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

# The sync runner.
RSYNC_LOCK_TTL = env.float("RSYNC_LOCK_TTL", default=30.0)  # seconds a dead runner keeps its lock
RSYNC_BINLOG_HEARTBEAT = env.float("RSYNC_BINLOG_HEARTBEAT", default=1.0)
RSYNC_BINLOG_READ_TIMEOUT = env.float("RSYNC_BINLOG_READ_TIMEOUT", default=10.0)
# PostgreSQL sources: each task keeps a logical replication slot named <prefix>_<task id> (the prefix
# keeps two installations that read the same server apart); a slot holding more WAL than this is
# shown with a warning (the server cannot recycle that WAL until the task reads on or is deleted).
RSYNC_REPLICATION_PREFIX = env.str("RSYNC_REPLICATION_PREFIX", default="rsync_task")
RSYNC_WAL_WARN_BYTES = env.int("RSYNC_WAL_WARN_BYTES", default=1024**3)
RSYNC_EMBED_BATCH = env.int("RSYNC_EMBED_BATCH", default=64)
RSYNC_EMBED_DEVICE = env.str("RSYNC_EMBED_DEVICE", default="")  # "" picks CUDA when present
# The bundled model embeds texts of similar length together, at most this many padded tokens
# (texts x longest) per call, besides RSYNC_EMBED_BATCH texts; 0 closes batches by count alone.
RSYNC_EMBED_TOKEN_BUDGET = env.int("RSYNC_EMBED_TOKEN_BUDGET", default=2048)
# Bytes from which glibc's malloc maps memory on its own (returned to the system when freed) in
# processes that embed; 0 leaves malloc alone. See HeapKeeper in datasources/embedders.py.
RSYNC_MALLOC_MMAP_THRESHOLD = env.int("RSYNC_MALLOC_MMAP_THRESHOLD", default=32 * 1024 * 1024)
# Embedding cache in Redis keyed by (model, text hash); 0 turns it off.
RSYNC_EMBED_CACHE_TTL = env.int("RSYNC_EMBED_CACHE_TTL", default=30 * 24 * 3600)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "pymysqlreplication": {"level": "WARNING"},
        "httpx": {"level": "WARNING"},
        "sentence_transformers": {"level": "WARNING"},
    },
}
