from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth.models import Permission
from django.db.models import BooleanField, Count, Exists, ExpressionWrapper, OuterRef, Q
from rest_framework.authtoken.admin import TokenAdmin
from rest_framework.authtoken.models import TokenProxy

from cs_portal.portal.models import (
    EVERY_TEAM_PERMISSION,
    AgentProfile,
    AgentToken,
    ApiClient,
    Conversation,
    Customer,
    Message,
    Team,
)
from cs_portal.portal.tokens import token_digest, token_key_new
from translation.models import Translation

admin.site.site_header = "Support portal administration"
admin.site.site_url = settings.FLOWER_URL  # "View site" opens Flower: the queues and workers
admin.site.site_title = "Support portal"
# The index links the operations page, Flower and readiness above the models.
admin.site.index_template = "admin/portal_index.html"


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ["name", "agents_count", "created_at"]
    search_fields = ["name"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(agents_total=Count("agents"))

    @admin.display(description="agents", ordering="agents_total")
    def agents_count(self, team: Team) -> int:
        return team.agents_total


@admin.register(AgentProfile)
class AgentProfileAdmin(admin.ModelAdmin):
    """An agent's languages: customer messages are translated into the working language, except
    those in a language the agent reads natively; translation can be switched off."""

    list_display = ["user", "team", "every_team", "working_language", "native", "translation_enabled", "is_available",
                    "created_at"]
    list_filter = ["team", "working_language", "translation_enabled", "is_available"]
    search_fields = ["user__username"]
    list_select_related = ["user", "team"]

    def get_queryset(self, request):
        app_label, codename = EVERY_TEAM_PERMISSION.split(".", 1)
        granted = Permission.objects.filter(content_type__app_label=app_label, codename=codename).filter(
            Q(user=OuterRef("user")) | Q(group__user=OuterRef("user"))
        )
        return super().get_queryset(request).annotate(
            sees_every_team=ExpressionWrapper(
                Q(user__is_active=True) & (Q(user__is_superuser=True) | Exists(granted)), output_field=BooleanField()
            )
        )

    @admin.display(description="every team", boolean=True, ordering="sees_every_team")
    def every_team(self, agent: AgentProfile) -> bool:
        """Sees every team's conversations (an active user with the permission, given to them or
        a group, or an active superuser); set on the user's page."""
        return agent.sees_every_team

    @admin.display(description="reads natively")
    def native(self, agent: AgentProfile) -> str:
        return ", ".join(agent.native_languages or []) or "-"


admin.site.unregister(TokenProxy)  # its list, edit page and titles show every agent's key whole


@admin.register(AgentToken)
class AgentTokenAdmin(TokenAdmin):
    """Agents' API tokens. The database keeps each key's digest only (``portal.tokens``): a new
    key is shown once, to whoever makes it, and a lost one is replaced (delete, then add). ``manage.py
    drf_create_token NAME`` does the same from a shell."""

    list_display = ("user", "created")
    raw_id_fields = ("user",)  # not a drop-down of every user

    def get_readonly_fields(self, request, obj=None):
        return ("user",) if obj is not None else ()  # a key moved to another user would sign in as them

    def save_model(self, request, obj, form, change) -> None:
        key = None
        if not change:
            key = token_key_new()
            obj.key = token_digest(key)
        super().save_model(request, obj, form, change)
        if key is not None:
            self.message_user(request, f"API token of {obj.user}: {key} (shown this once; give it to the agent).",
                              messages.WARNING)


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    """Keys are created with ``manage.py create_api_client`` (shown once); here they are revoked."""

    list_display = ["name", "key_prefix", "is_active", "created_at", "last_used_at"]
    readonly_fields = ["key_prefix", "key_hash", "created_at", "last_used_at"]
    list_filter = ["is_active"]

    def has_add_permission(self, request) -> bool:
        return False


# The large tables' lists (customers, conversations, messages; translations in translation/admin.py)
# count their rows once per page, not twice ("N of M selected" counts the whole table again), and
# their edit pages ask for a related row by id: a drop-down would list every conversation or
# customer, each label a query of its own.


@admin.register(Customer)
class CustomerAdmin(admin.ModelAdmin):
    list_display = ["name", "email", "external_id", "api_client", "created_at"]
    search_fields = ["name", "email", "external_id"]
    list_select_related = ["api_client"]
    show_full_result_count = False


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    fields = ["sender", "author", "language", "language_source", "text", "created_at"]
    readonly_fields = fields
    show_change_link = True

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("author__user")


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ["id", "customer", "language", "status", "team", "assignee", "last_message_at", "updated_at"]
    list_filter = ["status", "language", "team"]
    search_fields = ["customer__name", "customer__email", "subject"]
    inlines = [MessageInline]
    list_select_related = ["customer", "team", "assignee__user"]
    raw_id_fields = ["customer", "assignee"]
    show_full_result_count = False


class TranslationInline(admin.TabularInline):
    model = Translation
    extra = 0
    can_delete = False  # the ledger's rows go only with their message
    fields = ["target_language", "status", "text", "failure_reason", "model_name", "attempts", "worker"]
    readonly_fields = fields


@admin.register(Message)
class MessageAdmin(admin.ModelAdmin):
    list_display = ["id", "conversation", "sender", "language", "language_source", "created_at"]
    list_filter = ["sender", "language", "language_source"]
    search_fields = ["text"]
    inlines = [TranslationInline]
    list_select_related = ["conversation__customer"]
    raw_id_fields = ["conversation", "author"]
    ordering = ["-id"]  # newest first, read off the primary key (created_at has no index)
    show_full_result_count = False
