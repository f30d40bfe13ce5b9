// A long-lived AWS SDK for JavaScript v3 client for the SDK matrix tests: it prints `VERSION …`
// first, then calls GetCallerIdentity once at start and again for every line read on stdin,
// printing `ARN <arn>` or `ERROR <message>` per call. The SDK finds credentials and the endpoint
// on its own (the default chain and AWS_ENDPOINT_URL_STS), exactly as an application in a pod
// would; the client is created once, so a new ARN after credentials change proves the SDK
// refreshed them itself.
import { createRequire } from "node:module";
import { createInterface } from "node:readline";
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";

const sdk = createRequire(import.meta.url)("@aws-sdk/client-sts/package.json");
console.log(`VERSION @aws-sdk/client-sts ${sdk.version} on Node.js ${process.version}`);

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
