package auth

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/ferrymq/ferry/internal/echo"
)

// Permission is what a policy rule grants.
type Permission string

// The permissions, and the calls that need them (docs/security.md has the
// table of every RPC).
const (
	// Publish is publishing to a topic: Publish, PublishStream, and the
	// output topics of a Commit.
	Publish Permission = "publish"
	// Subscribe is consuming a subscription: Subscribe, Ack, Nack,
	// ModifyAckDeadline, Seek, and the acks of a Commit.
	Subscribe Permission = "subscribe"
	// Read is reading a topic's messages and describing topics and
	// subscriptions: ReadMessages, GetTopic, ListTopics,
	// ListSubscriptions, GetSubscription.
	Read Permission = "read"
	// Admin is creating, changing and deleting topics and subscriptions.
	Admin Permission = "admin"
	// Cluster is seeing the cluster's status: GetClusterStatus.
	Cluster Permission = "cluster"
)

// Permissions are all the permissions, in the order the docs list them.
var Permissions = []Permission{Publish, Subscribe, Read, Admin, Cluster}

func (p Permission) bit() uint8 {
	for i, q := range Permissions {
		if p == q {
			return 1 << i
		}
	}
	return 0
}

// Resource is what a permission is checked on: a topic (Subscription
// empty), a subscription of a topic, or nothing (both empty: the cluster).
type Resource struct {
	Topic, Subscription string
}

// String names r for a refusal, its names quoted and cut (echo.Quote).
func (r Resource) String() string {
	switch {
	case r.Topic == "" && r.Subscription == "":
		return "the cluster"
	case r.Subscription == "":
		return "topic " + echo.Quote(r.Topic)
	}
	return "subscription " + echo.Quote(r.Subscription) + " of topic " + echo.Quote(r.Topic)
}

// DeniedError is Authorize's refusal: no rule grants Permission on
// Resource to Principal. It wraps ErrDenied.
type DeniedError struct {
	Principal  string
	Permission Permission
	Resource   Resource
}

func (e *DeniedError) Error() string {
	return fmt.Sprintf("principal %s lacks the %s permission on %s", echo.Quote(e.Principal), e.Permission, e.Resource)
}

// Unwrap makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Unwrap() error { return ErrDenied }

// Limits of a policy or token file.
const (
	// MaxFileBytes is the largest token or policy file read.
	MaxFileBytes = 1 << 20
	// maxNameBytes bounds a principal, group or pattern.
	maxNameBytes = 256
)

// Policy is a parsed policy file: rules, each granting permissions to
// principals or groups on topics and subscriptions. What no rule grants
// is denied. A Policy is immutable and safe for concurrent use.
type Policy struct {
	rules []rule
}

// rule is one compiled rule. A rule without a subscriptions key covers
// its topics and every subscription of them; with one, it covers only
// those subscriptions of its topics, not the topics themselves.
type rule struct {
	principals   map[string]bool
	anyPrincipal bool
	groups       map[string]bool
	perms        uint8
	topics       []string
	subs         []string
	subsOnly     bool
}

// policyFile is the YAML form:
//
//	rules:
//	  - principals: [kitchen]
//	    groups: [ops]
//	    permissions: [subscribe, read]
//	    topics: [orders]
//	    subscriptions: [kitchen]
type policyFile struct {
	Rules *[]ruleFile `yaml:"rules"`
}

type ruleFile struct {
	Principals    []string  `yaml:"principals"`
	Groups        []string  `yaml:"groups"`
	Permissions   []string  `yaml:"permissions"`
	Topics        []string  `yaml:"topics"`
	Subscriptions *[]string `yaml:"subscriptions"`
}

// ParsePolicy parses a policy file's bytes. Any fault (an unknown key, an
// unknown permission, a rule that names no one or grants nothing it can
// apply to) refuses the whole file, with ErrInvalidFile.
func ParsePolicy(b []byte) (*Policy, error) {
	var f policyFile
	if err := decodeStrict(b, &f); err != nil {
		return nil, err
	}
	if f.Rules == nil {
		return nil, fmt.Errorf("policy: no rules key (an empty policy is \"rules: []\", which denies everything): %w", ErrInvalidFile)
	}
	p := &Policy{rules: make([]rule, 0, len(*f.Rules))}
	for i, rf := range *f.Rules {
		r, err := compileRule(rf)
		if err != nil {
			return nil, fmt.Errorf("policy: rule %d: %w: %w", i+1, err, ErrInvalidFile)
		}
		p.rules = append(p.rules, r)
	}
	return p, nil
}

func compileRule(rf ruleFile) (rule, error) {
	r := rule{principals: map[string]bool{}, groups: map[string]bool{}}
	if len(rf.Principals) == 0 && len(rf.Groups) == 0 {
		return r, errors.New("names no principals and no groups")
	}
	for _, p := range rf.Principals {
		if err := checkName("principal", p); err != nil {
			return r, err
		}
		if p == "*" {
			r.anyPrincipal = true
		}
		r.principals[p] = true
	}
	for _, g := range rf.Groups {
		if err := checkName("group", g); err != nil {
			return r, err
		}
		r.groups[g] = true
	}
	if len(rf.Permissions) == 0 {
		return r, errors.New("grants no permissions")
	}
	for _, s := range rf.Permissions {
		b := Permission(s).bit()
		if b == 0 {
			return r, fmt.Errorf("unknown permission %s (want publish, subscribe, read, admin or cluster)", echo.Quote(s))
		}
		r.perms |= b
	}
	for _, t := range rf.Topics {
		if err := checkPattern(t); err != nil {
			return r, fmt.Errorf("topics: %w", err)
		}
	}
	r.topics = rf.Topics
	if rf.Subscriptions != nil {
		r.subsOnly = true
		for _, s := range *rf.Subscriptions {
			if err := checkPattern(s); err != nil {
				return r, fmt.Errorf("subscriptions: %w", err)
			}
		}
		r.subs = *rf.Subscriptions
	}
	resourceful := r.perms &^ Cluster.bit()
	switch {
	case resourceful != 0 && len(r.topics) == 0:
		return r, errors.New(`names no topics for its permissions (topics: ["*"] is every topic)`)
	case r.subsOnly && r.perms&Publish.bit() != 0:
		return r, errors.New("grants publish on subscriptions only; publish is on topics: give it in a rule without subscriptions")
	case r.subsOnly && len(r.subs) == 0:
		return r, errors.New(`has an empty subscriptions list (omit it to cover every subscription of the topics, or use ["*"])`)
	}
	return r, nil
}

// decodeStrict decodes one YAML document into v, refusing unknown keys,
// more than one document and files over MaxFileBytes.
func decodeStrict(b []byte, v any) error {
	if len(b) > MaxFileBytes {
		return fmt.Errorf("%d bytes, over the limit of %d: %w", len(b), MaxFileBytes, ErrInvalidFile)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("empty file: %w", ErrInvalidFile)
		}
		return fmt.Errorf("%s: %w", echo.Cut(err.Error(), 200), ErrInvalidFile)
	}
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return fmt.Errorf("more than one YAML document: %w", ErrInvalidFile)
	}
	return nil
}

// checkName accepts a principal or group name: 1 to 256 bytes of
// printable UTF-8.
func checkName(what, s string) error {
	if s == "" || len(s) > maxNameBytes || !utf8.ValidString(s) {
		return fmt.Errorf("%s %s: want 1 to %d bytes of UTF-8", what, echo.Quote(s), maxNameBytes)
	}
	if strings.IndexFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) >= 0 {
		return fmt.Errorf("%s %s holds a control character", what, echo.Quote(s))
	}
	return nil
}

// checkPattern accepts a topic or subscription name pattern: the
// characters of names ([A-Za-z0-9._-]) and *, which matches any run of
// them, the empty run included.
func checkPattern(p string) error {
	if p == "" || len(p) > maxNameBytes {
		return fmt.Errorf("pattern %s: want 1 to %d characters", echo.Quote(p), maxNameBytes)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if c != '*' && c != '.' && c != '_' && c != '-' && (c < '0' || c > '9') && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') {
			return fmt.Errorf("pattern %s: only letters, digits, '.', '_', '-' and '*' are allowed", echo.Quote(p))
		}
	}
	return nil
}

// Match reports whether name matches pattern, where * matches any run of
// characters (none included) and every other character itself.
func Match(pattern, name string) bool {
	// The classic greedy wildcard match: on a mismatch, go back to the
	// last star and let it take one more character. Linear in practice,
	// O(len(pattern)·len(name)) at worst.
	p, n := 0, 0
	star, mark := -1, 0
	for n < len(name) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, n
			p++
		case p < len(pattern) && pattern[p] == name[n]:
			p++
			n++
		case star >= 0:
			p = star + 1
			mark++
			n = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

func matchAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if Match(p, name) {
			return true
		}
	}
	return false
}

// appliesTo reports whether r names id, by principal or by group.
func (r *rule) appliesTo(id Identity) bool {
	if r.anyPrincipal || r.principals[id.Principal] {
		return true
	}
	for _, g := range id.Groups {
		if r.groups[g] {
			return true
		}
	}
	return false
}

// covers reports whether r's topics and subscriptions cover res.
func (r *rule) covers(res Resource) bool {
	switch {
	case res.Topic == "" && res.Subscription == "":
		return true // the cluster: no names to match
	case !matchAny(r.topics, res.Topic):
		return false
	case res.Subscription == "":
		return !r.subsOnly
	}
	return !r.subsOnly || matchAny(r.subs, res.Subscription)
}

// Allowed reports whether some rule grants p on res to id.
func (pol *Policy) Allowed(id Identity, p Permission, res Resource) bool {
	b := p.bit()
	if b == 0 || id.Principal == "" {
		return false
	}
	for i := range pol.rules {
		r := &pol.rules[i]
		if r.perms&b != 0 && r.appliesTo(id) && r.covers(res) {
			return true
		}
	}
	return false
}

// Authorize is nil if some rule grants p on res to id, else a
// *DeniedError.
func (pol *Policy) Authorize(id Identity, p Permission, res Resource) error {
	if pol.Allowed(id, p, res) {
		return nil
	}
	return &DeniedError{Principal: id.Principal, Permission: p, Resource: res}
}

// GrantsAny reports whether some rule grants p to id on anything: a
// listing is refused without, and filtered with Allowed otherwise.
func (pol *Policy) GrantsAny(id Identity, p Permission) bool {
	b := p.bit()
	if id.Principal == "" {
		return false
	}
	for i := range pol.rules {
		if r := &pol.rules[i]; r.perms&b != 0 && r.appliesTo(id) {
			return true
		}
	}
	return false
}

// Rules is how many rules the policy has.
func (pol *Policy) Rules() int { return len(pol.rules) }
