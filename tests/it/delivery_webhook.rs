//! The `webhook` subcommand as the API server meets it: the compiled binary over real TLS
//! (certificates from a test CA), AdmissionReview bodies shaped like kube-apiserver's
//! (`fixtures/webhook/`), posted by a real HTTPS client (Python's `ssl` and `http.client` from
//! `.venv`, trusting only the test CA and checking the host name) over keep-alive connections.
//!
//! Also: the certificate rotated while serving, the manifests of `deploy/webhook/` rendered by
//! kustomize, and proof that the webhook never calls the Kubernetes API (so it needs no RBAC).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube_aws_iam_controller::delivery::ROLE_LABEL;
use kube_aws_iam_controller::delivery::mutate::{self, MutateOptions};
use serde_json::{Value, json};

use crate::ship::{kind_of, kinds, kustomize, only, relative_path};
use crate::support::apiserver::ApiServer;
use crate::support::argv;
use crate::support::assert_contains;
use crate::support::harness::{free_port, text};
use crate::support::moto::{ScratchDir, venv_bin};
use crate::support::repo_root;
use crate::support::volume::SecretVolume;

const BIN: &str = env!("CARGO_BIN_EXE_kube-aws-iam-controller");
const SIDECAR_IMAGE: &str = "registry.example.com/kube-aws-iam-controller:webhook-test";
/// A marker in a fixture pod's environment: no answer or log may contain it.
const SEEDED: &str = "WEBHOOKSEEDED";

fn fixture(name: &str) -> Value {
    let path = repo_root().join("fixtures/webhook").join(name);
    let body = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn options() -> MutateOptions {
    MutateOptions::new(SIDECAR_IMAGE)
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A test CA that signs serving certificates for `localhost` and 127.0.0.1.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "webhook test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        let issuer = rcgen::Issuer::new(params, key);
        Ca { cert, issuer }
    }

    /// A serving pair: (certificate PEM, key PEM, SHA-256 of the certificate's DER).
    fn leaf(&self, name: &str) -> (String, String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let digest = sha256_hex(cert.der());
        (cert.pem(), key.serialize_pem(), digest)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The webhook process and the HTTPS client
// ---------------------------------------------------------------------------------------------

/// The running binary; killed on drop. Its standard error goes to a file read by [`Self::logs`].
struct Webhook {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    fn start(dir: &Path, cert: &Path, key: &Path, env: &[(&str, String)]) -> Webhook {
        let port = free_port();
        let log = dir.join(format!("webhook-{port}.log"));
        let child = Command::new(BIN)
            .args([
                "webhook",
                "--webhook-addr",
                &format!("127.0.0.1:{port}"),
                "--tls-cert-file",
                &cert.display().to_string(),
                "--tls-key-file",
                &key.display().to_string(),
                "--sidecar-image",
                SIDECAR_IMAGE,
                "--default-delivery",
                "process",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "debug")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("the binary starts");
        let mut w = Webhook { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = w.child.try_wait() {
                panic!("the webhook exited with {status}:\n{}", w.logs());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the webhook did not listen within 20 s:\n{}",
                w.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Keeps named HTTPS connections open across requests (`conn`), or uses a fresh one per request.
const CLIENT: &str = r#"
import hashlib, http.client, json, socket, ssl, sys
port, cafile = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=cafile)
conns = {}
for line in sys.stdin:
    cmd = json.loads(line)
    try:
        name = cmd.get("conn")
        c = conns.get(name) if name else None
        reused = c is not None and c.sock is not None
        if c is None:
            c = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=20)
            if name:
                conns[name] = c
        if cmd.get("server_hostname"):
            # One request over a raw TLS socket, verifying the certificate for that name.
            name = cmd["server_hostname"]
            raw = socket.create_connection(("127.0.0.1", port), timeout=20)
            tls = ctx.wrap_socket(raw, server_hostname=name)
            tls.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (cmd["path"], name)).encode())
            data = b""
            while True:
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            out = {"status": int(head.split(b" ")[1]), "content_type": "", "body": body.decode("utf-8", "replace"),
                   "cert_sha256": hashlib.sha256(tls.getpeercert(True)).hexdigest(), "reused": False}
            tls.close()
            print(json.dumps(out), flush=True)
            continue
        sock_before = c.sock
        headers = {"Accept": "application/json, */*", "User-Agent": "kube-apiserver-admission"}
        if cmd.get("declare_length") is not None:
            c.putrequest("POST", cmd["path"])
            c.putheader("Content-Type", "application/json")
            c.putheader("Content-Length", str(cmd["declare_length"]))
            c.endheaders()
        else:
            body = cmd.get("body")
            if body is not None:
                body = body.encode("utf-8")
                headers["Content-Type"] = "application/json"
            c.request(cmd.get("method", "GET"), cmd["path"], body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        cert = c.sock.getpeercert(binary_form=True) if c.sock else b""
        out = {
            "status": r.status,
            "content_type": r.getheader("Content-Type"),
            "body": data.decode("utf-8", "replace"),
            "cert_sha256": hashlib.sha256(cert).hexdigest(),
            "reused": reused and sock_before is c.sock,
        }
        if not name or r.will_close:
            c.close()
            conns.pop(name, None)
    except Exception as e:
        out = {"error": type(e).__name__ + ": " + str(e)}
    print(json.dumps(out), flush=True)
"#;

struct Client {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One answer as the client saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: String,
    body: String,
    cert_sha256: String,
    reused: bool,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Client {
    fn new(dir: &Path, port: u16, ca_pem: &str) -> Client {
        let ca = dir.join("ca.crt");
        std::fs::write(&ca, ca_pem).unwrap();
        let mut child = Command::new(venv_bin("python"))
            .args(["-c", CLIENT, &port.to_string(), &ca.display().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the venv's python starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Client {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, cmd: Value) -> Result<Reply, String> {
        writeln!(self.stdin, "{cmd}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let v: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("client answered {line:?}: {e}"));
        if let Some(e) = v.get("error") {
            return Err(e.as_str().unwrap_or_default().to_string());
        }
        Ok(Reply {
            status: v["status"].as_u64().unwrap() as u16,
            content_type: v["content_type"].as_str().unwrap_or_default().to_string(),
            body: v["body"].as_str().unwrap_or_default().to_string(),
            cert_sha256: v["cert_sha256"].as_str().unwrap().to_string(),
            reused: v["reused"].as_bool().unwrap(),
        })
    }

    fn get(&mut self, path: &str) -> Reply {
        self.send(json!({"path": path}))
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// POSTs `body` to /mutate on the named keep-alive connection.
    fn post_on(&mut self, conn: &str, body: &str) -> Reply {
        self.send(json!({"conn": conn, "method": "POST", "path": "/mutate", "body": body}))
            .unwrap_or_else(|e| panic!("POST /mutate: {e}"))
    }

    fn review(&mut self, review: &Value) -> Reply {
        self.post_on("api", &review.to_string())
    }
}

/// One webhook serving a fresh CA's certificate, and a client trusting that CA.
struct Setup {
    dir: ScratchDir,
    ca: Ca,
    volume: SecretVolume,
    webhook: Webhook,
    client: Client,
}

fn setup(label: &str) -> Setup {
    setup_with_env(label, &[])
}

fn setup_with_env(label: &str, env: &[(&str, String)]) -> Setup {
    let dir = ScratchDir::new(label);
    let ca = Ca::new();
    let (cert, key, _) = ca.leaf("webhook one");
    // The serving pair, mounted the way kubelet mounts a Secret.
    let volume = SecretVolume::with(
        &format!("{label}-tls"),
        [("tls.crt", &cert), ("tls.key", &key)],
    );
    let webhook = Webhook::start(
        dir.path(),
        &volume.file("tls.crt"),
        &volume.file("tls.key"),
        env,
    );
    let client = Client::new(dir.path(), webhook.port, &ca.cert.pem());
    Setup {
        dir,
        ca,
        volume,
        webhook,
        client,
    }
}

/// The response of an AdmissionReview answer, after the envelope checks every answer must pass.
fn response_of(reply: &Reply, request: &Value) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.content_type, "application/json");
    let v = reply.json();
    assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{v}");
    assert_eq!(v["kind"], "AdmissionReview", "{v}");
    assert_eq!(
        v["response"]["uid"], request["request"]["uid"],
        "the answer carries the request's uid"
    );
    v["response"].clone()
}

fn decoded_patch(response: &Value) -> json_patch::Patch {
    assert_eq!(response["allowed"], true, "{response}");
    assert_eq!(response["patchType"], "JSONPatch", "{response}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a base64 patch"))
        .expect("the patch is base64");
    serde_json::from_slice(&bytes).expect("the patch is a JSON patch")
}

/// The value of a counter or histogram sample in a /metrics body.
fn metric(body: &str, sample: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{body}"))
}

fn requests_metric(body: &str, result: &str) -> f64 {
    metric(
        body,
        &format!("kube_aws_iam_controller_webhook_admission_requests_total{{result=\"{result}\"}}"),
    )
}

// ---------------------------------------------------------------------------------------------
// Admission
// ---------------------------------------------------------------------------------------------

/// A labelled pod gets a JSON patch that, applied to the pod as the API server would, gives
/// exactly the pod the shared mutation produces (what `inject` writes); the patched pod is a
/// valid Pod, and sending it again (reinvocation, or an already injected manifest) changes
/// nothing.
#[test]
fn labelled_pods_get_the_shared_mutation_as_a_json_patch() {
    let mut s = setup("webhook-labelled");
    for name in ["labelled-pod.json", "endpoint-pod-dry-run.json"] {
        let request = fixture(name);
        let pod = request["request"]["object"].clone();
        let reply = s.client.review(&request);
        let response = response_of(&reply, &request);
        let patch = decoded_patch(&response);
        let mut patched = pod.clone();
        json_patch::patch(&mut patched, &patch)
            .unwrap_or_else(|e| panic!("{name}: the patch does not apply to the pod: {e}"));

        let expected = mutate::mutated(&pod, &options())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .expect("the shared mutation changes a labelled pod");
        assert_eq!(patched, expected, "{name}: webhook and mutation disagree");
        assert_eq!(
            patched,
            inject(&pod),
            "{name}: the webhook's pod differs from what `inject` prints"
        );
        assert_ne!(patched, pod, "{name}: the pod changed");
        let typed: Pod = serde_json::from_value(patched.clone())
            .unwrap_or_else(|e| panic!("{name}: the patched pod is no Pod: {e}"));
        assert!(typed.spec.is_some());

        let mut again = request.clone();
        again["request"]["object"] = patched;
        again["request"]["uid"] = json!("0d7c1b2a-reinvocation");
        let response = response_of(&s.client.review(&again), &again);
        assert_eq!(response["allowed"], true);
        assert!(
            response.get("patch").is_none(),
            "{name}: an injected pod gets no second patch: {response}"
        );
        assert!(
            !reply.body.contains(SEEDED),
            "{name}: the answer quotes the pod"
        );
    }
    let metrics = s.client.get("/metrics").body;
    assert_eq!(requests_metric(&metrics, "mutated"), 2.0, "{metrics}");
    assert_eq!(requests_metric(&metrics, "unchanged"), 2.0, "{metrics}");
    assert!(
        !s.webhook.logs().contains(SEEDED),
        "the logs quote the pod's environment"
    );
}

/// What `kube-aws-iam-controller inject -` prints for `pod`, with the webhook's flags.
fn inject(pod: &Value) -> Value {
    let mut child = Command::new(BIN)
        .args(argv(&format!(
            "inject - --sidecar-image {SIDECAR_IMAGE} --default-delivery process"
        )))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pod.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "inject: {}", text(&out.stderr));
    serde_saphyr::from_str(&text(&out.stdout)).unwrap_or_else(|e| {
        panic!(
            "inject printed no YAML document ({e}):\n{}",
            text(&out.stdout)
        )
    })
}

#[test]
fn unlabelled_pods_are_allowed_untouched() {
    let mut s = setup("webhook-unlabelled");
    let request = fixture("unlabelled-pod.json");
    assert!(
        request["request"]["object"]["metadata"]["labels"]
            .get(ROLE_LABEL)
            .is_none()
    );
    let response = response_of(&s.client.review(&request), &request);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(response.get("patch").is_none(), "{response}");
    assert!(response.get("patchType").is_none(), "{response}");
    let metrics = s.client.get("/metrics").body;
    assert_eq!(requests_metric(&metrics, "unchanged"), 1.0, "{metrics}");
    assert_eq!(requests_metric(&metrics, "mutated"), 0.0, "{metrics}");
}

/// An opted-in pod that cannot get credentials is refused (it must not run without them), with
/// a message the API server shows to whoever created it, naming the field at fault.
#[test]
fn a_pod_that_cannot_be_mutated_is_refused_naming_the_field() {
    let mut s = setup("webhook-refused");
    let request = fixture("unknown-container.json");
    let response = response_of(&s.client.review(&request), &request);
    assert_eq!(response["allowed"], false, "{response}");
    assert_eq!(response["status"]["code"], 400, "{response}");
    let message = response["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("kube-aws-iam-controller/containers"),
        "the message names the annotation: {message}"
    );
    assert!(
        message.contains("sidekick"),
        "the message names the missing container: {message}"
    );
    let metrics = s.client.get("/metrics").body;
    assert_eq!(requests_metric(&metrics, "denied"), 1.0, "{metrics}");
}

/// Bodies that are no AdmissionReview get a clear answer — an AdmissionReview refusal when the
/// request's uid can be found, a plain 400 otherwise, 413 beyond the size cap — and the server
/// keeps serving, on the same connection and on new ones.
#[test]
fn bad_bodies_get_clear_answers_and_the_server_keeps_serving() {
    let mut s = setup("webhook-garbage");

    let reply = s.client.post_on("api", "this is not JSON");
    assert_eq!(reply.status, 400);
    assert!(reply.content_type.starts_with("text/plain"));
    assert_contains(&reply.body, "not JSON");
    assert_contains(&reply.body, "AdmissionReview");

    // Valid JSON with the uid but a field of the wrong type: refused inside an AdmissionReview.
    let mut wrong = fixture("labelled-pod.json");
    wrong["request"]["operation"] = json!("EXPLODE");
    let response = response_of(&s.client.post_on("api", &wrong.to_string()), &wrong);
    assert_eq!(response["allowed"], false);
    let message = response["status"]["message"].as_str().unwrap();
    assert_contains(message, "AdmissionReview");
    assert_contains(message, "EXPLODE");

    // Truncated: the uid cannot be trusted, so a plain 400.
    let whole = fixture("labelled-pod.json").to_string();
    let reply = s.client.post_on("api", &whole[..whole.len() / 2]);
    assert_eq!(reply.status, 400, "{}", reply.body);

    // The old v1beta1 envelope is named.
    let mut old = fixture("labelled-pod.json");
    old["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let response = response_of(&s.client.post_on("api", &old.to_string()), &old);
    assert!(
        response["status"]["message"]
            .as_str()
            .unwrap()
            .contains("admission.k8s.io/v1beta1")
    );

    // Oversize, declared: refused before the body is read.
    let reply = s
        .client
        .send(json!({"path": "/mutate", "declare_length": 8 * 1024 * 1024}))
        .expect("an answer to an oversize request");
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(reply.body.contains("3 MiB"), "{}", reply.body);

    // Oversize, actually sent (4 MiB of JSON).
    let big = format!("{{\"padding\":\"{}\"}}", "x".repeat(4 * 1024 * 1024));
    match s
        .client
        .send(json!({"method": "POST", "path": "/mutate", "body": big}))
    {
        Ok(reply) => assert_eq!(reply.status, 413, "{}", reply.body),
        // The server answers from the declared length and closes before the client finished
        // sending; a client that reads only after sending sees the closed connection instead.
        Err(e) => assert!(
            ["Reset", "Broken", "Aborted", "EOF"]
                .iter()
                .any(|k| e.contains(k)),
            "{e}"
        ),
    }

    let get = s
        .client
        .send(json!({"method": "GET", "path": "/mutate"}))
        .unwrap();
    assert_eq!(get.status, 405);

    // Still serving, on the connection used all along and on a new one.
    let request = fixture("unlabelled-pod.json");
    let reply = s.client.review(&request);
    assert!(
        reply.reused,
        "the keep-alive connection survived the bad bodies"
    );
    assert_eq!(response_of(&reply, &request)["allowed"], true);
    let reply = s
        .client
        .send(json!({"method": "POST", "path": "/mutate", "body": request.to_string()}))
        .unwrap();
    assert_eq!(response_of(&reply, &request)["allowed"], true);
    let metrics = s.client.get("/metrics").body;
    assert!(requests_metric(&metrics, "invalid") >= 5.0, "{metrics}");
    assert_eq!(requests_metric(&metrics, "unchanged"), 2.0, "{metrics}");
    assert!(
        s.webhook.child.try_wait().unwrap().is_none(),
        "still running"
    );
}

// ---------------------------------------------------------------------------------------------
// Certificate rotation
// ---------------------------------------------------------------------------------------------

/// cert-manager renews the certificate: kubelet swaps the Secret volume's `..data` symlink. The
/// next handshakes serve the new certificate while connections opened before keep being
/// answered; a broken update is logged and the last good pair stays in service.
#[test]
fn a_rotated_certificate_is_served_without_a_restart() {
    let mut s = setup("webhook-rotation");
    let request = fixture("unlabelled-pod.json");
    let first = s.client.review(&request);
    response_of(&first, &request);

    let (cert, key, second_digest) = s.ca.leaf("webhook two");
    assert_ne!(first.cert_sha256, second_digest);
    s.volume.update([("tls.crt", &cert), ("tls.key", &key)]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let fresh = s.client.get("/healthz");
        if fresh.cert_sha256 == second_digest {
            break;
        }
        assert_eq!(
            fresh.cert_sha256, first.cert_sha256,
            "an unknown certificate"
        );
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 15 s:\n{}",
            s.webhook.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connection opened before the rotation still answers (with the old certificate).
    let old = s.client.review(&request);
    assert!(
        old.reused,
        "the request went over the pre-rotation connection"
    );
    assert_eq!(old.cert_sha256, first.cert_sha256);
    assert_eq!(response_of(&old, &request)["allowed"], true);

    // A broken update: the second pair stays in service.
    let (_, other_key, _) = s.ca.leaf("unrelated");
    let (third_cert, _, _) = s.ca.leaf("webhook three");
    s.volume
        .update([("tls.crt", &third_cert), ("tls.key", &other_key)]);
    let logged = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let fresh = s.client.get("/healthz");
            assert_eq!(fresh.status, 200);
            assert_eq!(
                fresh.cert_sha256, second_digest,
                "a mismatched pair was served"
            );
            let metrics = s.client.get("/metrics").body;
            if metric(
                &metrics,
                "kube_aws_iam_controller_webhook_certificate_reloads_total{result=\"failed\"}",
            ) >= 1.0
            {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(logged, "the failed reload was not counted");
    let logs = s.webhook.logs();
    assert!(
        logs.contains("does not belong to --tls-cert-file"),
        "the failure is logged with its reason:\n{logs}"
    );
    assert!(!logs.contains("PRIVATE KEY"), "key material in the logs");
    let metrics = s.client.get("/metrics").body;
    assert_eq!(
        metric(
            &metrics,
            "kube_aws_iam_controller_webhook_certificate_reloads_total{result=\"ok\"}"
        ),
        1.0
    );
    drop(s.dir);
}

/// Start-up refuses a pair that does not load, naming the flag, and exits 2.
#[test]
fn start_up_fails_clearly_without_a_usable_certificate() {
    let dir = ScratchDir::new("webhook-no-cert");
    let key = dir.path().join("tls.key");
    std::fs::write(&key, "not a key").unwrap();
    let out = Command::new(BIN)
        .args([
            "webhook",
            "--webhook-addr",
            "127.0.0.1:0",
            "--tls-cert-file",
            &dir.path().join("missing.crt").display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
        ])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("--tls-cert-file"), "{stderr}");
}

/// SIGTERM: the webhook stops accepting, answers what is in flight, and exits 0.
#[test]
fn sigterm_stops_the_webhook_cleanly() {
    let mut s = setup("webhook-sigterm");
    let request = fixture("unlabelled-pod.json");
    response_of(&s.client.review(&request), &request);
    let pid = s.webhook.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = s.webhook.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{}", s.webhook.logs());
    assert!(s.webhook.logs().contains("stopped"));
}

// ---------------------------------------------------------------------------------------------
// Health, readiness, metrics
// ---------------------------------------------------------------------------------------------

#[test]
fn health_readiness_and_metrics_are_served_over_tls() {
    let mut s = setup("webhook-health");
    for path in ["/healthz", "/readyz"] {
        let reply = s.client.get(path);
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"), "{path}");
    }
    assert_eq!(s.client.get("/nope").status, 404);
    let request = fixture("labelled-pod.json");
    response_of(&s.client.review(&request), &request);
    let reply = s.client.get("/metrics");
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .content_type
            .starts_with("application/openmetrics-text")
    );
    let body = reply.body;
    for result in ["mutated", "unchanged", "denied", "invalid"] {
        requests_metric(&body, result);
    }
    assert_eq!(requests_metric(&body, "mutated"), 1.0, "{body}");
    assert_eq!(
        metric(
            &body,
            "kube_aws_iam_controller_webhook_admission_duration_seconds_count"
        ),
        1.0,
        "{body}"
    );
    assert!(body.ends_with("# EOF\n"));
}

/// The webhook never calls the Kubernetes API, even with a kubeconfig and in-cluster
/// environment pointing at one: it needs no RBAC, and its ServiceAccount gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_makes_no_kubernetes_api_request() {
    let api = ApiServer::start().await;
    let scratch = ScratchDir::new("webhook-no-api");
    let kubeconfig = api.write_kubeconfig(scratch.path());
    let env = vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("KUBERNETES_SERVICE_HOST", api.addr().ip().to_string()),
        ("KUBERNETES_SERVICE_PORT", api.addr().port().to_string()),
    ];
    let requests = tokio::task::spawn_blocking(move || {
        let mut s = setup_with_env("webhook-no-api-run", &env);
        let mut answered = 0;
        for name in [
            "labelled-pod.json",
            "endpoint-pod-dry-run.json",
            "unlabelled-pod.json",
            "unknown-container.json",
        ] {
            let request = fixture(name);
            response_of(&s.client.review(&request), &request);
            answered += 1;
        }
        s.client.get("/metrics");
        s.client.get("/readyz");
        answered
    })
    .await
    .unwrap();
    assert_eq!(requests, 4);
    let recorded = api.requests();
    assert!(
        recorded.is_empty(),
        "the webhook called the Kubernetes API: {:?}",
        recorded
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------------------------
// Manifests
// ---------------------------------------------------------------------------------------------

/// A kustomization deploying the controller with the webhook component, as docs/webhook.md
/// shows it.
fn render_with_component(extra: &str) -> Vec<Value> {
    let dir = ScratchDir::new("webhook-kustomize");
    let deploy = relative_path(dir.path(), &repo_root().join("deploy"));
    let component = relative_path(dir.path(), &repo_root().join("deploy/webhook"));
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\ncomponents:\n  - {}\n{extra}",
            deploy.display(),
            component.display()
        ),
    )
    .unwrap();
    kustomize(dir.path())
}

#[test]
fn the_component_renders_a_highly_available_webhook_without_rbac() {
    let docs = render_with_component("");
    let found = kinds(&docs);
    for kind in [
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
        "MutatingWebhookConfiguration",
        "Issuer",
        "Certificate",
    ] {
        assert!(found.contains(kind), "no {kind} rendered: {found:?}");
    }
    let webhook_docs: Vec<Value> = docs
        .iter()
        .filter(|d| {
            d["metadata"]["labels"]["app.kubernetes.io/name"] == "kube-aws-iam-controller-webhook"
                || kind_of(d) == "Issuer"
                || kind_of(d) == "Certificate"
        })
        .cloned()
        .collect();

    let d: Deployment = docs
        .iter()
        .filter(|d| kind_of(d) == "Deployment")
        .find(|d| d["metadata"]["name"] == "kube-aws-iam-controller-webhook")
        .map(|d| serde_json::from_value(d.clone()).unwrap())
        .expect("the webhook Deployment");
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    assert!(
        !pod.topology_spread_constraints
            .clone()
            .unwrap_or_default()
            .is_empty()
            || pod
                .affinity
                .as_ref()
                .and_then(|a| a.pod_anti_affinity.as_ref())
                .is_some(),
        "replicas are spread over nodes"
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    let sa_name = pod.service_account_name.clone().unwrap();
    let sa: ServiceAccount = only(&webhook_docs, "ServiceAccount", "the webhook component");
    assert_eq!(sa.metadata.name.as_deref(), Some(sa_name.as_str()));
    assert_eq!(sa.automount_service_account_token, Some(false));
    // No RBAC object names the webhook's ServiceAccount.
    for doc in &docs {
        if kind_of(doc).ends_with("Binding") {
            for subject in doc["subjects"].as_array().into_iter().flatten() {
                assert_ne!(
                    subject["name"].as_str(),
                    Some(sa_name.as_str()),
                    "the webhook's ServiceAccount is bound to a role"
                );
            }
        }
    }
    let c = &pod.containers[0];
    let args: Vec<&str> = c.args.iter().flatten().map(String::as_str).collect();
    assert_eq!(args[0], "webhook");
    // The arguments parse, and name the files of the mounted certificate Secret.
    let cli = <kube_aws_iam_controller::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("kube-aws-iam-controller").chain(args.iter().copied()),
    )
    .expect("the Deployment's arguments parse");
    let Some(kube_aws_iam_controller::cli::Command::Webhook(w)) = cli.command else {
        panic!("not the webhook subcommand");
    };
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| w.tls_cert_file.starts_with(&m.mount_path))
        .expect("the certificate's directory is a mount");
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount never sees renewals"
    );
    assert!(w.tls_key_file.starts_with(&mount.mount_path));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    let tls_secret = volume.secret.as_ref().unwrap().secret_name.clone().unwrap();
    // Hardened like the controller's pods.
    let pod_sc = pod.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_eq!(pod_sc.run_as_user, Some(crate::ship::dockerfile_uid()));
    assert_eq!(
        pod_sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    let resources = c.resources.as_ref().expect("resources");
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|l| l.contains_key("memory"))
    );
    let image = format!(
        "registry.example.com/kube-aws-iam-controller:{}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(c.image.as_deref(), Some(image.as_str()));
    let sidecar_image = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "KUBE_AWS_IAM_CONTROLLER_SIDECAR_IMAGE")
        .and_then(|e| e.value.clone());
    assert_eq!(
        sidecar_image.as_deref(),
        Some(image.as_str()),
        "the injected sidecar runs the webhook's own image"
    );
    let port = c.ports.iter().flatten().find(|p| p.container_port == 8443);
    assert!(
        port.is_some(),
        "container port 8443 (the --webhook-addr default)"
    );
    for probe in [&c.liveness_probe, &c.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.scheme.as_deref(), Some("HTTPS"));
    }

    let pdb: PodDisruptionBudget = only(&webhook_docs, "PodDisruptionBudget", "component");
    let pdb_spec = pdb.spec.unwrap();
    assert!(pdb_spec.min_available.is_some() || pdb_spec.max_unavailable.is_some());
    assert_eq!(
        pdb_spec.selector.unwrap().match_labels,
        spec.selector.match_labels
    );

    let svc: Service = only(&webhook_docs, "Service", "component");
    let svc_spec = svc.spec.unwrap();
    assert_eq!(svc_spec.selector, spec.selector.match_labels);

    let mwc: MutatingWebhookConfiguration =
        only(&docs, "MutatingWebhookConfiguration", "component");
    let hooks = mwc.webhooks.unwrap();
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    assert_eq!(h.admission_review_versions, vec!["v1".to_string()]);
    assert_eq!(h.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(h.side_effects, "None");
    assert_eq!(h.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert!(h.timeout_seconds.is_some_and(|t| t <= 10));
    let service = h.client_config.service.as_ref().unwrap();
    assert_eq!(Some(service.name.as_str()), svc.metadata.name.as_deref());
    assert_eq!(
        Some(service.namespace.as_str()),
        svc.metadata.namespace.as_deref()
    );
    assert_eq!(service.path.as_deref(), Some("/mutate"));
    let rules = h.rules.clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].operations, Some(vec!["CREATE".to_string()]));
    assert_eq!(rules[0].resources, Some(vec!["pods".to_string()]));
    assert_eq!(rules[0].api_groups, Some(vec![String::new()]));
    let object_selector = h.object_selector.clone().unwrap();
    let expr = object_selector.match_expressions.unwrap();
    assert_eq!(
        (expr[0].key.as_str(), expr[0].operator.as_str()),
        (ROLE_LABEL, "Exists")
    );
    let ns_exprs = h
        .namespace_selector
        .clone()
        .unwrap()
        .match_expressions
        .unwrap();
    let controller_ns = d.metadata.namespace.clone().unwrap();
    assert!(
        ns_exprs
            .iter()
            .any(|e| e.key == "kubernetes.io/metadata.name"
                && e.operator == "NotIn"
                && e.values.iter().flatten().any(|v| v == "kube-system")
                && e.values.iter().flatten().any(|v| *v == controller_ns)),
        "kube-system and the controller's namespace are excluded: {ns_exprs:?}"
    );

    // cert-manager: the serving Certificate writes the mounted Secret for the Service's DNS
    // name, and its CA is injected into the webhook configuration.
    let inject = mwc
        .metadata
        .annotations
        .unwrap_or_default()
        .get("cert-manager.io/inject-ca-from")
        .cloned()
        .expect("cert-manager.io/inject-ca-from");
    let (ns, name) = inject.split_once('/').unwrap();
    let certificate = docs
        .iter()
        .find(|d| {
            kind_of(d) == "Certificate"
                && d["metadata"]["namespace"] == ns
                && d["metadata"]["name"] == name
        })
        .expect("the injected Certificate is rendered");
    assert_eq!(certificate["spec"]["secretName"], tls_secret.as_str());
    let dns = format!("{}.{}.svc", service.name, service.namespace);
    assert!(
        certificate["spec"]["dnsNames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == dns.as_str()),
        "the certificate names {dns}"
    );
    let issuer = certificate["spec"]["issuerRef"]["name"].as_str().unwrap();
    assert!(
        docs.iter()
            .any(|d| kind_of(d) == "Issuer" && d["metadata"]["name"] == issuer),
        "the Certificate's Issuer is rendered"
    );
}

/// The `replacements:` entry docs/webhook.md gives keeps --sidecar-image equal to the image an
/// `images:` override sets.
#[test]
fn the_documented_overlay_sets_the_sidecar_image_to_the_deployed_image() {
    let doc = std::fs::read_to_string(repo_root().join("docs/webhook.md")).unwrap();
    let start = doc
        .find("```yaml\napiVersion: kustomize.config.k8s.io/v1beta1")
        .expect("docs/webhook.md shows the overlay");
    let overlay = &doc[start + "```yaml\n".len()..];
    let overlay = &overlay[..overlay.find("```").unwrap()];
    let (_, rest) = overlay
        .split_once("components:")
        .expect("the overlay uses the component");
    let extra = rest
        .lines()
        .skip_while(|l| l.trim_start().starts_with('-') || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    let docs = render_with_component(&format!("{extra}\n"));
    let d = docs
        .iter()
        .find(|d| {
            kind_of(d) == "Deployment" && d["metadata"]["name"] == "kube-aws-iam-controller-webhook"
        })
        .unwrap();
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let image = c["image"].as_str().unwrap();
    assert!(
        !image.starts_with("registry.example.com/"),
        "the documented overlay sets an image: {image}"
    );
    let env = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "KUBE_AWS_IAM_CONTROLLER_SIDECAR_IMAGE")
        .unwrap();
    assert_eq!(env["value"].as_str(), Some(image));
}

/// The documented way without cert-manager: its `openssl` commands make a pair the webhook
/// serves and that verifies against the CA for the Service's DNS name, and its `ca.b64` is the
/// CA for the caBundle.
#[test]
fn the_documented_openssl_recipe_makes_a_working_pair() {
    let doc = std::fs::read_to_string(repo_root().join("docs/webhook.md")).unwrap();
    let start = doc
        .find("```sh\nSVC=")
        .expect("docs/webhook.md has the openssl recipe");
    let script = &doc[start + "```sh\n".len()..];
    let script = &script[..script.find("```").unwrap()];
    let dir = ScratchDir::new("webhook-openssl");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir.path())
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "the documented openssl recipe failed (openssl must be installed):\n{}",
        text(&out.stderr)
    );
    let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    let b64 = std::fs::read_to_string(dir.path().join("ca.b64")).unwrap();
    assert!(!b64.contains('\n'));
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap(),
        ca.as_bytes(),
        "ca.b64 is the CA"
    );
    let webhook = Webhook::start(
        dir.path(),
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
        &[],
    );
    let mut client = Client::new(dir.path(), webhook.port, &ca);
    for name in [
        "kube-aws-iam-controller-webhook.kube-system.svc",
        "kube-aws-iam-controller-webhook.kube-system.svc.cluster.local",
    ] {
        let reply = client
            .send(json!({"path": "/readyz", "server_hostname": name}))
            .unwrap_or_else(|e| panic!("TLS for {name}: {e}"));
        assert_eq!((reply.status, reply.body.as_str()), (200, "ok\n"));
    }
    let wrong = client.send(json!({"path": "/readyz", "server_hostname": "elsewhere.example"}));
    assert!(
        wrong
            .as_ref()
            .is_err_and(|e| e.contains("CERTIFICATE_VERIFY_FAILED") || e.contains("match")),
        "the certificate must not verify for another name: {wrong:?}"
    );
}
