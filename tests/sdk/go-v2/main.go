// A long-lived AWS SDK for Go v2 client for the SDK matrix tests: it prints `VERSION …` first,
// then calls GetCallerIdentity once at start and again for every line read on stdin, printing
// `ARN <arn>` or `ERROR <message>` per call. The SDK finds credentials on its own
// (config.LoadDefaultConfig: the environment, the shared credentials file with its
// credential_process, the container-credentials endpoint), exactly as an application in a pod
// would; the client is created once, so a new ARN after credentials change proves the SDK
// refreshed them itself.
//
// The config module Debian ships predates AWS_ENDPOINT_URL_STS, so the client passes it on as
// the STS endpoint: test plumbing to reach moto, not a credential setting.
//
// Built offline from Debian's golang-github-aws-aws-sdk-go-v2-dev in GOPATH mode (see the test).
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

func report(err error) {
	fmt.Println("ERROR", strings.Join(strings.Fields(err.Error()), " "))
}

func main() {
	fmt.Println("VERSION aws-sdk-go-v2", aws.SDKVersion, "on", runtime.Version())
	ctx := context.Background()
	var client *sts.Client
	// LoadDefaultConfig resolves where credentials come from (not the credentials
	// themselves): a failure there is an answer.
	if cfg, err := config.LoadDefaultConfig(ctx); err != nil {
		report(err)
	} else {
		client = sts.NewFromConfig(cfg, func(o *sts.Options) {
			if url := os.Getenv("AWS_ENDPOINT_URL_STS"); url != "" {
				o.EndpointResolver = sts.EndpointResolverFromURL(url)
			}
		})
	}
	call := func() {
		if client == nil {
			fmt.Println("ERROR no client")
			return
		}
		out, err := client.GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err != nil {
			report(err)
			return
		}
		fmt.Println("ARN", aws.ToString(out.Arn))
	}
	call()
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		call()
	}
}
