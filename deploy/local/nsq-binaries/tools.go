// The nsq binaries the local stack runs, pinned by go.mod (nsq's own replace directive included).
//go:build tools

package tools

import (
	_ "github.com/nsqio/nsq/apps/nsqd"
	_ "github.com/nsqio/nsq/apps/nsqlookupd"
)
