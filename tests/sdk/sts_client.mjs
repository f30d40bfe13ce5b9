// A long-lived AWS SDK for JavaScript v3 client for the SDK matrix tests: it calls
// GetCallerIdentity once at start and again for every line read on stdin, printing `ARN <arn>`
// or `ERROR <message>` per call. The SDK finds credentials and the endpoint on its own (the
// default chain and AWS_ENDPOINT_URL_STS), exactly as an application in a pod would; the client
// is created once, so a new ARN after credentials change proves the SDK refreshed them itself.
import { createInterface } from "node:readline";
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";

const client = new STSClient({});

async function call() {
  try {
    const out = await client.send(new GetCallerIdentityCommand({}));
    console.log(`ARN ${out.Arn}`);
  } catch (e) {
    console.log(`ERROR ${e.name}: ${String(e.message).replace(/\s+/g, " ")}`);
  }
}

await call();
for await (const _line of createInterface({ input: process.stdin })) {
  await call();
}
