// A long-lived AWS SDK for Go (v1) client for the SDK matrix tests: it prints `VERSION …` first,
// then calls GetCallerIdentity once at start and again for every line read on stdin, printing
// `ARN <arn>` or `ERROR <message>` per call. The SDK finds credentials on its own (its default
// chain: the environment, the shared credentials file with its credential_process, the
// container-credentials endpoint), exactly as an application in a pod would; the client is
// created once, so a new ARN after credentials change proves the SDK refreshed them itself.
//
// SDK v1 does not read AWS_ENDPOINT_URL_STS (the version Debian ships predates it), so the
// client passes it on as the STS endpoint: test plumbing to reach moto, not a credential setting.
//
// Built offline from Debian's golang-github-aws-aws-sdk-go-dev in GOPATH mode (see the test).
package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/aws/aws-sdk-go/aws"
	"github.com/aws/aws-sdk-go/aws/session"
	"github.com/aws/aws-sdk-go/service/sts"
)

func report(err error) {
	fmt.Println("ERROR", strings.Join(strings.Fields(err.Error()), " "))
}

func main() {
	fmt.Println("VERSION aws-sdk-go", aws.SDKVersion, "on", runtime.Version())
	cfg := aws.NewConfig().WithCredentialsChainVerboseErrors(true)
	if url := os.Getenv("AWS_ENDPOINT_URL_STS"); url != "" {
		cfg = cfg.WithEndpoint(url)
	}
	var client *sts.STS
	// The session resolves where credentials come from (not the credentials themselves): a
	// failure there is an answer.
	if sess, err := session.NewSession(cfg); err != nil {
		report(err)
	} else {
		client = sts.New(sess)
	}
	call := func() {
		if client == nil {
			fmt.Println("ERROR no client")
			return
		}
		out, err := client.GetCallerIdentity(&sts.GetCallerIdentityInput{})
		if err != nil {
			report(err)
			return
		}
		fmt.Println("ARN", aws.StringValue(out.Arn))
	}
	call()
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		call()
	}
}
