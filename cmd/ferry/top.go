package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/client"
)

func newTopCommand() *cobra.Command {
	var (
		interval time.Duration
		once     bool
	)
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Watch topics and subscriptions live: rates, backlog, in flight, oldest unacked",
		Long: `Show every topic (messages, publish rate) and subscription (guarantee,
backlog, in flight, oldest unacked age, delivery and redelivery rates,
consumers), refreshed every --interval from the admin API. q quits.
With --once it samples twice, --interval apart, prints one table and exits.`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(cmd, false)
	cmd.Flags().DurationVar(&interval, "interval", 2*time.Second, "time between samples")
	cmd.Flags().BoolVar(&once, "once", false, "print one table (two samples apart) and exit")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if interval <= 0 {
			return fmt.Errorf("--interval %v: want a positive duration", interval)
		}
		c, err := cf.connect()
		if err != nil {
			return err
		}
		defer c.Close()
		sample := func(ctx context.Context) (snapshot, error) {
			s, err := takeSnapshot(ctx, c, time.Now())
			return s, rpcError(err)
		}
		if once {
			prev, err := sample(cmd.Context())
			if err != nil {
				return err
			}
			time.Sleep(interval)
			cur, err := sample(cmd.Context())
			if err != nil {
				return err
			}
			return render(cmd.OutOrStdout(), prev, cur)
		}
		m := &topModel{sample: sample, interval: interval}
		_, err = tea.NewProgram(m, tea.WithContext(cmd.Context()), tea.WithAltScreen()).Run()
		return err
	}
	return cmd
}

// snapshot is the admin API's view at one moment.
type snapshot struct {
	at     time.Time
	topics []topicSample
	subs   []subSample
}

type topicSample struct {
	name       string
	partitions int
	messages   uint64 // retained
	head       uint64 // sum of head offsets: grows with every message stored
}

type subSample struct {
	topic, name string
	guarantee   string
	stats       client.SubscriptionStats
}

// takeSnapshot reads every topic and subscription; each call runs under
// the client's call timeout.
func takeSnapshot(ctx context.Context, c *client.Client, now time.Time) (snapshot, error) {
	s := snapshot{at: now}
	topics, err := c.ListTopics(ctx)
	if err != nil {
		return s, err
	}
	for _, t := range topics {
		got, err := c.GetTopic(ctx, t.Name)
		if err != nil {
			continue // deleted meanwhile
		}
		ts := topicSample{name: t.Name, partitions: len(got.Partitions)}
		for _, p := range got.Partitions {
			ts.messages += p.Messages
			ts.head += p.HeadOffset
		}
		s.topics = append(s.topics, ts)
		subs, err := c.ListSubscriptions(ctx, t.Name)
		if err != nil {
			continue
		}
		for _, sub := range subs {
			s.subs = append(s.subs, subSample{topic: t.Name, name: sub.Name, guarantee: sub.Config.Guarantee.String(), stats: sub.Stats})
		}
	}
	return s, nil
}

// perSecond is how fast a counter grew between two samples, per second; a
// counter that went back (a restart) counts from zero.
func perSecond(prev, cur uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	if cur < prev {
		prev = 0
	}
	return float64(cur-prev) / d.Seconds()
}

// render writes the table of cur, with rates since prev.
func render(w io.Writer, prev, cur snapshot) error {
	d := cur.at.Sub(prev.at)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "TOPIC\tPARTITIONS\tMESSAGES\tPUBLISH/S\n")
	prevHead := map[string]uint64{}
	for _, t := range prev.topics {
		prevHead[t.name] = t.head
	}
	for _, t := range cur.topics {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.1f\n", t.name, t.partitions, t.messages, perSecond(prevHead[t.name], t.head, d))
	}
	fmt.Fprintf(tw, "\nSUBSCRIPTION\tGUARANTEE\tBACKLOG\tIN FLIGHT\tOLDEST UNACKED\tDELIVER/S\tREDELIVER/S\tDEAD LETTERS\tCONSUMERS\n")
	prevSub := map[string]client.SubscriptionStats{}
	for _, s := range prev.subs {
		prevSub[s.topic+"/"+s.name] = s.stats
	}
	subs := append([]subSample(nil), cur.subs...)
	sort.Slice(subs, func(i, j int) bool { return subs[i].topic+"/"+subs[i].name < subs[j].topic+"/"+subs[j].name })
	for _, s := range subs {
		p := prevSub[s.topic+"/"+s.name] // zero: new since prev
		oldest := "-"
		if s.stats.OldestUnackedAge != 0 { // the broker sends none while nothing is unacked
			oldest = s.stats.OldestUnackedAge.Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s/%s\t%s\t%d\t%d\t%s\t%.1f\t%.1f\t%d\t%d\n", s.topic, s.name, s.guarantee,
			s.stats.Backlog, s.stats.InFlight, oldest,
			perSecond(p.Delivered, s.stats.Delivered, d), perSecond(p.Redelivered, s.stats.Redelivered, d),
			s.stats.DeadLettered, s.stats.Consumers)
	}
	return tw.Flush()
}

// topModel is the live view: it samples every interval and shows the
// table with rates since the previous sample.
type topModel struct {
	sample    func(context.Context) (snapshot, error)
	interval  time.Duration
	prev, cur snapshot
	err       error
	have      int // samples taken
}

type sampled struct {
	s   snapshot
	err error
}

func (m *topModel) take() tea.Cmd {
	return func() tea.Msg {
		s, err := m.sample(context.Background())
		return sampled{s, err}
	}
}

func (m *topModel) Init() tea.Cmd { return m.take() }

func (m *topModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyMsg:
		switch msg.String() {
		case "q", "ctrl+c", "esc":
			return m, tea.Quit
		}
	case sampled:
		m.err = msg.err
		if msg.err == nil {
			m.prev, m.cur = m.cur, msg.s
			m.have++
		}
		return m, tea.Tick(m.interval, func(time.Time) tea.Msg { return m.take()() })
	}
	return m, nil
}

func (m *topModel) View() string {
	var b strings.Builder
	fmt.Fprintf(&b, "ferry top — every %v — q quits\n\n", m.interval)
	switch {
	case m.err != nil:
		fmt.Fprintf(&b, "error: %v\n\n", rpcError(m.err))
	case m.have == 0:
		b.WriteString("sampling...\n")
		return b.String()
	}
	prev := m.prev
	if m.have < 2 {
		prev = m.cur // no rates yet
	}
	_ = render(&b, prev, m.cur)
	return b.String()
}
