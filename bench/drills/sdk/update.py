"""One governed PATCH through auth0-python; prints the outcome and how long it took."""
import sys
import time

from auth0.management import ManagementClient

client = ManagementClient(domain=sys.argv[1], token="drill-token")
started = time.monotonic()
try:
    client.organizations.connections.update("org_acme", "con_saml", show_as_button=False)
    print(f"auth0-python: ok after {(time.monotonic() - started) * 1000:.0f} ms")
except Exception as e:  # the SDK's ApiError carries the status
    print(f"auth0-python: {type(e).__name__} {getattr(e, 'status_code', '?')} after {(time.monotonic() - started) * 1000:.0f} ms")
