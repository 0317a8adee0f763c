package auth

import (
	"errors"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, name string
		want          bool
	}{
		{"orders", "orders", true},
		{"orders", "orders2", false},
		{"orders", "order", false},
		{"*", "anything.at_all-1", true},
		{"*", "", true},
		{"orders.*", "orders.eu", true},
		{"orders.*", "orders.", true},
		{"orders.*", "orders", false},
		{"*.dlq", "kitchen.dlq", true},
		{"*.dlq", "kitchen.dlq.x", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "abc", true},
		{"a*b*c", "acb", false},
		{"a**", "a", true},
		{"*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false},
		{"ORDERS", "orders", false},
	} {
		if got := Match(c.pattern, c.name); got != c.want {
			t.Errorf("Match(%q, %q) = %v, want %v", c.pattern, c.name, got, c.want)
		}
	}
}

const testPolicy = `
rules:
  # the kitchen consumes orders through its own subscription, and
  # publishes to its own topics
  - principals: [kitchen]
    permissions: [subscribe, read]
    topics: [orders]
    subscriptions: [kitchen]
  - principals: [kitchen]
    permissions: [publish]
    topics: ["kitchen.*"]
  # operators administer everything and see the cluster
  - groups: [ops]
    permissions: [admin, read, cluster]
    topics: ["*"]
  # anyone authenticated reads public topics
  - principals: ["*"]
    permissions: [read]
    topics: ["public.*"]
  # the auditor sees the cluster only
  - principals: [auditor]
    permissions: [cluster]
`

func TestPolicy(t *testing.T) {
	pol, err := ParsePolicy([]byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	kitchen := Identity{Principal: "kitchen"}
	alice := Identity{Principal: "alice", Groups: []string{"dev", "ops"}}
	bob := Identity{Principal: "bob"}
	auditor := Identity{Principal: "auditor"}
	for _, c := range []struct {
		id   Identity
		perm Permission
		res  Resource
		want bool
	}{
		{kitchen, Subscribe, Resource{"orders", "kitchen"}, true},
		{kitchen, Subscribe, Resource{"orders", "billing"}, false}, // another subscription
		{kitchen, Subscribe, Resource{"payments", "kitchen"}, false},
		{kitchen, Read, Resource{"orders", "kitchen"}, true},
		{kitchen, Read, Resource{Topic: "orders"}, false}, // a subscription rule covers no topic
		{kitchen, Publish, Resource{Topic: "orders"}, false},
		{kitchen, Publish, Resource{Topic: "kitchen.ready"}, true},
		{kitchen, Publish, Resource{Topic: "kitchen"}, false},
		{kitchen, Admin, Resource{Topic: "kitchen.ready"}, false},
		{kitchen, Subscribe, Resource{"kitchen.ready", "x"}, false}, // no subscribe in the topic rule
		{kitchen, Cluster, Resource{}, false},
		{kitchen, Read, Resource{Topic: "public.menu"}, true},      // principals: ["*"]
		{kitchen, Read, Resource{"public.menu", "anything"}, true}, // a topic rule covers its subscriptions
		{alice, Admin, Resource{Topic: "orders"}, true},            // by group
		{alice, Admin, Resource{"orders", "kitchen"}, true},        // and the topic's subscriptions
		{alice, Publish, Resource{Topic: "orders"}, false},         // admin is not publish
		{alice, Cluster, Resource{}, true},
		{bob, Read, Resource{Topic: "orders"}, false}, // deny by default
		{bob, Read, Resource{Topic: "public.menu"}, true},
		{bob, Cluster, Resource{}, false},
		{auditor, Cluster, Resource{}, true},
		{auditor, Read, Resource{Topic: "orders"}, false},
		{Identity{}, Read, Resource{Topic: "public.menu"}, false},             // no principal: nobody, even for "*"
		{Identity{Principal: "ops"}, Admin, Resource{Topic: "orders"}, false}, // a principal named like a group is not in it
		{alice, Permission("root"), Resource{Topic: "orders"}, false},
	} {
		if got := pol.Allowed(c.id, c.perm, c.res); got != c.want {
			t.Errorf("%s %s on %s = %v, want %v", c.id.Principal, c.perm, c.res, got, c.want)
		}
		err := pol.Authorize(c.id, c.perm, c.res)
		if (err == nil) != c.want || (err != nil && !errors.Is(err, ErrDenied)) {
			t.Errorf("Authorize(%s %s on %s) = %v", c.id.Principal, c.perm, c.res, err)
		}
	}
	if !pol.GrantsAny(kitchen, Publish) || pol.GrantsAny(bob, Admin) || !pol.GrantsAny(bob, Read) {
		t.Error("GrantsAny is wrong")
	}
	err = pol.Authorize(kitchen, Publish, Resource{Topic: strings.Repeat("x", 5000)})
	if len(err.Error()) > 300 || !strings.Contains(err.Error(), `"kitchen" lacks the publish permission on topic "xxx`) {
		t.Errorf("refusal = %q, want the principal, permission and a cut resource", err)
	}
}

func TestParsePolicyRefuses(t *testing.T) {
	for name, file := range map[string]string{
		"empty":                    "",
		"no rules key":             "rulez: []\n",
		"unknown key":              "rules:\n  - principals: [a]\n    permissions: [read]\n    topics: [x]\n    topic: [y]\n",
		"unknown permission":       "rules:\n  - principals: [a]\n    permissions: [reed]\n    topics: [x]\n",
		"no one":                   "rules:\n  - permissions: [read]\n    topics: [x]\n",
		"no permissions":           "rules:\n  - principals: [a]\n    topics: [x]\n",
		"no topics":                "rules:\n  - principals: [a]\n    permissions: [read]\n",
		"publish on subscriptions": "rules:\n  - principals: [a]\n    permissions: [publish]\n    topics: [x]\n    subscriptions: [s]\n",
		"empty subscriptions":      "rules:\n  - principals: [a]\n    permissions: [subscribe]\n    topics: [x]\n    subscriptions: []\n",
		"bad pattern":              "rules:\n  - principals: [a]\n    permissions: [read]\n    topics: [\"x/y\"]\n",
		"empty principal":          "rules:\n  - principals: [\"\"]\n    permissions: [read]\n    topics: [x]\n",
		"control character":        "rules:\n  - principals: [\"a\\x01\"]\n    permissions: [read]\n    topics: [x]\n",
		"two documents":            "rules: []\n---\nrules: []\n",
		"not yaml":                 "rules: [\n",
		"rules not a list":         "rules: 3\n",
	} {
		if _, err := ParsePolicy([]byte(file)); !errors.Is(err, ErrInvalidFile) {
			t.Errorf("%s: ParsePolicy = %v, want ErrInvalidFile", name, err)
		}
	}
	// An empty rule list is valid: it denies everything.
	pol, err := ParsePolicy([]byte("rules: []\n"))
	if err != nil || pol.Allowed(Identity{Principal: "a"}, Read, Resource{Topic: "x"}) {
		t.Errorf("rules: [] = %v, %v", pol, err)
	}
}
