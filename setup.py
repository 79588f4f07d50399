"""The one build step pyproject.toml cannot declare: the schema files live at the repository's
top level (one definition, no symlinks) and ship inside the wheel as steplog/eventstore/*.sql."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SQL_FILES = ("schema.sql", "migrations.sql", "schema_postgres.sql", "migrations_postgres.sql")


class BuildWithSchema(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads them from the checkout
        target = Path(self.build_lib) / "steplog" / "eventstore"
        target.mkdir(parents=True, exist_ok=True)
        for name in SQL_FILES:
            self.copy_file(name, str(target / name))


setup(cmdclass={"build_py": BuildWithSchema})
