"""Index kinds the portal's tables need beyond Django's own."""

from __future__ import annotations

import copy

from django.db import models
from django.db.models.expressions import OrderBy


class NullsLastIndex(models.Index):
    """An index on expressions ordered ``NULLS LAST``, for PostgreSQL's planner to read an
    ``ORDER BY ... DESC NULLS LAST`` off it. SQLite refuses those words in ``CREATE INDEX``, and
    its ``DESC`` already puts NULLs last, so there they are left out."""

    def create_sql(self, model, schema_editor, using="", **kwargs):
        if schema_editor.connection.vendor != "sqlite":
            return super().create_sql(model, schema_editor, using=using, **kwargs)
        plain = copy.copy(self)
        plain.expressions = tuple(
            OrderBy(expression.expression, descending=expression.descending) if isinstance(expression, OrderBy)
            else expression
            for expression in self.expressions
        )
        return models.Index.create_sql(plain, model, schema_editor, using=using, **kwargs)
