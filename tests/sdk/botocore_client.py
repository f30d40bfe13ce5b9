"""A long-lived botocore (the SDK under boto3 and the AWS CLI) client for the SDK matrix tests.

It prints `VERSION …` first, then calls GetCallerIdentity once at start and again for every line read on stdin, printing
`ARN <arn>` or `ERROR <message>` per call. botocore finds credentials and the endpoint on its own
(its default chain and AWS_ENDPOINT_URL_STS), exactly as an application in a pod would; the client
is created once, so a new ARN after credentials change proves botocore refreshed them itself.
"""

import platform
import sys

import botocore
import botocore.session


def report(e):
    print("ERROR", type(e).__name__ + ":", " ".join(str(e).split()), flush=True)


def call(client):
    try:
        print("ARN", client.get_caller_identity()["Arn"], flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported to the test
        report(e)


def main():
    print("VERSION botocore", botocore.__version__, "on Python", platform.python_version(), flush=True)
    # botocore resolves credentials when it creates the client: a failure there is an answer.
    try:
        client = botocore.session.get_session().create_client("sts")
    except Exception as e:  # noqa: BLE001
        client = None
        report(e)
    if client is not None:
        call(client)
    for _line in sys.stdin:
        if client is not None:
            call(client)
        else:
            print("ERROR no client", flush=True)


if __name__ == "__main__":
    main()
