from django.db import migrations


def staff_agents_keep_every_team(apps, schema_editor):
    """Before this permission, being staff showed an agent every team's conversations: the staff
    agents of that release keep what they saw (remove it in the admin where it was not meant)."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    AgentProfile = apps.get_model("portal", "AgentProfile")
    staff = [agent.user for agent in AgentProfile.objects.filter(user__is_staff=True, user__is_superuser=False)
             .select_related("user")]
    if not staff:
        return  # the permission itself is made after migrating, as every model permission is
    kind, _ = ContentType.objects.get_or_create(app_label="portal", model="conversation")
    permission, _ = Permission.objects.get_or_create(
        content_type=kind, codename="view_every_team",
        defaults={"name": "Can open every team's conversations in the workspace and agent API"},
    )
    for user in staff:
        user.user_permissions.add(permission)


class Migration(migrations.Migration):

    dependencies = [
        ("portal", "0007_token_log_entries"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="conversation",
            options={
                "ordering": ["-updated_at"],
                "permissions": [
                    ("view_every_team", "Can open every team's conversations in the workspace and agent API"),
                ],
            },
        ),
        migrations.RunPython(staff_agents_keep_every_team, migrations.RunPython.noop),
    ]
