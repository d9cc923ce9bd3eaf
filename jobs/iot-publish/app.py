#!/usr/bin/env python3
"""Publish {"counter": n} to an AWS IoT Core topic once a second.

The workload of jobs/iot-publish.nomad.hcl. It signs with the default AWS
credential chain, so on a device it uses the Roles Anywhere
`credential_process` line of /root/.aws/credentials (the host's /root/aws,
mounted read-only), which runs /usr/bin/aws_signing_helper (the host's
/usr/bin) with the device certificate under /root/certificates.

Messages are numbered from 1: the first is {"counter": 1}. A message that
fails transiently is retried with the same number, so the topic sees every
number once and in order.

Environment:
  IOT_TOPIC          topic to publish to (default hello/world)
  AWS_REGION         region (else AWS_DEFAULT_REGION, else `region` in the
                     AWS config/credentials file)
  IOT_ENDPOINT       the account's IoT data endpoint, e.g.
                     abc123-ats.iot.eu-west-1.amazonaws.com (a URL works too).
                     Unset: looked up with iot:DescribeEndpoint (iot:Data-ATS).
  PUBLISH_INTERVAL   seconds between messages (default 1)
  PUBLISH_COUNT      stop after this many messages (default: run until SIGTERM)

Endpoint precedence: IOT_ENDPOINT, then an endpoint URL configured for the
SDK (AWS_ENDPOINT_URL_IOT_DATA_PLANE or AWS_ENDPOINT_URL, as for every AWS
SDK client; used by local stand-ins such as moto), then DescribeEndpoint.

Exit status: 0 after SIGTERM/SIGINT or PUBLISH_COUNT messages; 2 when the
credentials, region or permissions are unusable (one line on stderr);
1 on any other permanent error. Network errors, throttling and 5xx answers
are retried with exponential backoff (1 s doubling up to 30 s) forever.
"""

import json
import os
import signal
import sys
import threading
import time

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionError as BotoConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

DEFAULT_TOPIC = "hello/world"
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0

# Error codes that mean "these credentials may not do this": retrying will
# not help, the operator has to fix the certificate, profile or role.
AUTH_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
    "ExpiredTokenException",
    "ForbiddenException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "MissingAuthenticationTokenException",
    "SignatureDoesNotMatch",
    "UnauthorizedException",
    "UnrecognizedClientException",
}
THROTTLE_CODES = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailableException",
    "InternalFailureException",
    "InternalFailure",
}

# Short timeouts: Nomad gives a task 5 s between SIGTERM and SIGKILL, and a
# call in flight delays the exit. Retries are ours (see publish_once), so the
# SDK makes one attempt per call.
SDK_CONFIG = Config(
    connect_timeout=3,
    read_timeout=5,
    retries={"total_max_attempts": 1, "mode": "standard"},
)


class FatalError(Exception):
    """A permanent error: the process exits with `code` and this message."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def log(message):
    print(message, flush=True)


def warn(message):
    print(message, file=sys.stderr, flush=True)


def classify(err):
    """'auth', 'transient' or 'permanent' for an exception from a call."""
    if isinstance(err, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return "auth"
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in AUTH_CODES or status in (401, 403):
            return "auth"
        if code in THROTTLE_CODES or status == 429 or status >= 500:
            return "transient"
        return "permanent"
    if isinstance(err, (HTTPClientError, BotoConnectionError)):
        return "transient"
    return "permanent"


def describe(err):
    if isinstance(err, ClientError):
        e = err.response.get("Error", {})
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?")
        return f"{e.get('Code', 'error')} (HTTP {status}): {e.get('Message', '')}".rstrip(": ")
    return str(err) or type(err).__name__


def one_line(text):
    return " ".join(str(text).split())


def call_with_retry(what, fn, stop, sleep=None):
    """fn() until it succeeds, retrying transient errors with backoff.

    Returns fn's result, or None when `stop` was set while waiting to retry.
    Raises FatalError on credential and other permanent errors.
    """
    wait = sleep or stop.wait
    delay = BACKOFF_START
    while True:
        try:
            return fn()
        except (BotoCoreError, ClientError) as err:
            kind = classify(err)
            if kind == "auth":
                raise FatalError(
                    f"credentials error during {what}: {one_line(describe(err))} "
                    "(check the device certificate and the Roles Anywhere credential_process "
                    "in /root/.aws, and that the role allows this action)",
                    code=2,
                ) from err
            if kind == "permanent":
                raise FatalError(f"{what} failed: {one_line(describe(err))}") from err
            warn(f"{what} failed, retrying in {delay:g}s: {one_line(describe(err))}")
            wait(delay)
            if stop.is_set():
                return None
            delay = min(delay * 2, BACKOFF_MAX)


def run(client, topic=DEFAULT_TOPIC, interval=1.0, count=None, stop=None, sleep=None, clock=time.monotonic):
    """Publish {"counter": n} for n = 1, 2, ... to `topic` through `client`.

    `client` is a boto3 "iot-data" client. One message every `interval`
    seconds (a fixed rate from the first message; a late message does not
    shift the ones after it) until `count` messages went out or `stop` (a
    threading.Event) is set. `sleep(seconds)` waits (default: stop.wait, so
    a stop request ends the wait at once) and `clock()` reads a monotonic
    clock. Returns how many messages were published.
    """
    stop = stop or threading.Event()
    wait = sleep or stop.wait
    start = clock()
    n = 0
    while not stop.is_set() and (count is None or n < count):
        payload = json.dumps({"counter": n + 1})
        ok = call_with_retry(
            f"publish to {topic}",
            lambda: client.publish(topic=topic, qos=0, payload=payload.encode()),
            stop,
            sleep,
        )
        if ok is None:
            break
        n += 1
        log(f"published {payload} to {topic}")
        if count is not None and n >= count:
            break
        wait(max(0.0, start + n * interval - clock()))
    return n


def configured_endpoint():
    """An endpoint URL the SDK configuration gives the iot-data client."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() == "true":
        return None
    return os.environ.get("AWS_ENDPOINT_URL_IOT_DATA_PLANE") or os.environ.get("AWS_ENDPOINT_URL") or None


def data_endpoint(session, stop):
    """The endpoint URL for the iot-data client, or None for the SDK's own."""
    explicit = os.environ.get("IOT_ENDPOINT", "").strip()
    if explicit:
        return explicit if "://" in explicit else f"https://{explicit}"
    iot = session.client("iot", config=SDK_CONFIG)
    try:
        found = call_with_retry(
            "iot:DescribeEndpoint",
            lambda: iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"],
            stop,
        )
    except FatalError as err:
        if err.code != 2:
            raise
        # The role may publish without being allowed to look the endpoint up.
        warn(
            f"{err}; falling back to the SDK's default IoT data endpoint "
            "(set IOT_ENDPOINT to the account's iot:Data-ATS endpoint to avoid this)"
        )
        return None
    if found is None:
        return None
    configured = configured_endpoint()
    if configured:
        log(f"IoT data endpoint {found}; using the configured endpoint URL {configured} instead")
        return None
    log(f"IoT data endpoint {found}")
    return f"https://{found}"


def positive_number(name, default, kind):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise FatalError(f"{name} must be a positive number, not {raw!r}", code=2)
    return value


def main():
    stop = threading.Event()

    def on_signal(signum, _frame):
        log(f"received {signal.Signals(signum).name}, stopping")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        topic = os.environ.get("IOT_TOPIC", "").strip() or DEFAULT_TOPIC
        interval = positive_number("PUBLISH_INTERVAL", 1.0, float)
        count = positive_number("PUBLISH_COUNT", None, int)
        # botocore itself reads only AWS_DEFAULT_REGION; AWS_REGION is what
        # the other SDKs (and this job's documentation) use.
        session = boto3.session.Session(region_name=os.environ.get("AWS_REGION", "").strip() or None)
        if not session.region_name:
            raise FatalError(
                "no AWS region: set AWS_REGION or `region` in the AWS config (/root/.aws)", code=2
            )
        if session.get_credentials() is None:
            raise FatalError(
                "no AWS credentials found: mount the device's /root/aws (with its "
                "Roles Anywhere credential_process) at /root/.aws, or set AWS_* variables",
                code=2,
            )
        endpoint = data_endpoint(session, stop)
        if stop.is_set():
            return 0
        client = session.client("iot-data", endpoint_url=endpoint, config=SDK_CONFIG)
        log(f"publishing to {topic} every {interval:g}s through {client.meta.endpoint_url}")
        n = run(client, topic=topic, interval=interval, count=count, stop=stop)
        log(f"stopped after {n} messages")
        return 0
    except FatalError as err:
        warn(f"iot-publish: {one_line(err)}")
        return err.code
    except NoRegionError:
        warn("iot-publish: no AWS region: set AWS_REGION or `region` in the AWS config (/root/.aws)")
        return 2
    except (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError) as err:
        warn(f"iot-publish: credentials error: {one_line(err)}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
