"""A host Flask app with its own db, models and migrations, which installs keyservice."""

from __future__ import annotations

from pathlib import Path

from flask import Flask, g
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from keyservice import KeyService, require_key

from .servers import TEST_HOST_SETTINGS, deployment_settings

db = SQLAlchemy()
migrate = Migrate()
keys = KeyService()


class Team(db.Model):
    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


def create_host_app(database_uri: str, migrations: Path) -> Flask:
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=database_uri, KEYSERVICE_BCRYPT_ROUNDS=4, **TEST_HOST_SETTINGS)
    app.config.update(deployment_settings(database_uri))
    db.init_app(app)
    migrate.init_app(app, db, directory=str(migrations))
    keys.init_app(app)

    @app.get("/teams/report")
    @require_key("reports:read")
    def team_report():
        team = db.session.scalar(db.select(Team).where(Team.name == g.auth.external_client_id))
        return {"team": team.name if team else None, "key": g.auth.key_id}

    return app
