"""A long-lived botocore (the SDK under boto3 and the AWS CLI) client for the SDK matrix tests.

It calls GetCallerIdentity once at start and again for every line read on stdin, printing
`ARN <arn>` or `ERROR <message>` per call. botocore finds credentials and the endpoint on its own
(its default chain and AWS_ENDPOINT_URL_STS), exactly as an application in a pod would; the client
is created once, so a new ARN after credentials change proves botocore refreshed them itself.
"""

import sys

import botocore
import botocore.session


def call(client):
    try:
        print("ARN", client.get_caller_identity()["Arn"], flush=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported to the test
        print("ERROR", type(e).__name__ + ":", " ".join(str(e).split()), flush=True)


def main():
    client = botocore.session.get_session().create_client("sts")
    call(client)
    for _line in sys.stdin:
        call(client)


if __name__ == "__main__":
    main()
