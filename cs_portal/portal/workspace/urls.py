from django.contrib.auth import views as auth_views
from django.urls import path

from cs_portal.portal.workspace import views

app_name = "workspace"

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("login/", auth_views.LoginView.as_view(template_name="workspace/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(next_page="workspace:login"), name="logout"),
    path("events/", views.events, name="events"),
    path("settings/", views.settings_view, name="settings"),
    path("conversations/<int:conversation_id>/", views.conversation_view, name="conversation"),
    path("conversations/<int:conversation_id>/take/", views.conversation_take, name="take"),
    path("conversations/<int:conversation_id>/assign/", views.conversation_assign, name="assign"),
    path("conversations/<int:conversation_id>/status/", views.conversation_status, name="status"),
    path("conversations/<int:conversation_id>/reply/", views.reply, name="reply"),
    path("messages/<int:message_id>/correct/", views.message_correct, name="correct"),
    path("messages/<int:message_id>/send/", views.message_send, name="send"),
    path("messages/<int:message_id>/language/", views.message_language, name="language"),
    path("messages/<int:message_id>/translate/", views.message_translate, name="translate"),
    path("translations/<int:translation_id>/retry/", views.translation_retry_view, name="retry"),
]
