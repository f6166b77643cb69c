"""Resources every layer asset takes besides the stores a test sets up itself: an empty live window
(the whole daily partition) and alerting without a webhook."""

from resources.alerts import AlertingResource
from resources.live_window import LiveWindow

LAYER_RESOURCES = {"live_window": LiveWindow(), "alerting": AlertingResource()}
