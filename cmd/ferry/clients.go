package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/ferrymq/ferry/client"
)

func newClientsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "clients",
		Short: "List the clients connected to a broker: principal, address, streams, rates",
		Long: `List the clients connected to the broker named by --server (in a cluster,
that node's clients only): for each connection, the principal its calls count
against (with auth off, its IP address), its remote address, when it
connected, its open publish and subscribe streams, and the messages per
second it published and was delivered over the last complete 10 seconds.
Needs the admin permission on every topic once auth is on.`,
		Args: cobra.NoArgs,
	}
	cf := addClientFlags(cmd, true)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := cf.validate(); err != nil {
			return err
		}
		creds, err := cf.tls.creds()
		if err != nil {
			return err
		}
		opts, err := cf.token.options()
		if err != nil {
			return err
		}
		opts = append(opts, client.WithTLS(creds), client.WithLogger(slog.New(slog.DiscardHandler)))
		var cs client.Clients
		err = cf.call(cmd.Context(), func(ctx context.Context) error {
			c, err := client.Dial(ctx, cf.server, opts...)
			if err != nil {
				return err
			}
			defer c.Close()
			cs, err = c.ListClients(ctx)
			return err
		})
		if err != nil {
			return err
		}
		if cf.output == "json" {
			return printJSON(cmd.OutOrStdout(), cs)
		}
		return printClients(cmd.OutOrStdout(), cs, time.Now())
	}
	return cmd
}

// printClients prints one line per connection.
func printClients(w io.Writer, cs client.Clients, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PRINCIPAL\tREMOTE ADDR\tCONNECTED\tPUB STREAMS\tSUB STREAMS\tIN MSG/S\tOUT MSG/S\tCALLS")
	for _, c := range cs.Clients {
		p := c.Principal
		if p == "" {
			p = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s ago\t%d\t%d\t%.1f\t%.1f\t%d\n", p, c.RemoteAddr, now.Sub(c.ConnectedTime).Truncate(time.Second),
			c.PublishStreams, c.SubscribeStreams, c.MessagesInPerSecond, c.MessagesOutPerSecond, c.Calls)
	}
	if cs.Untracked > 0 {
		fmt.Fprintf(tw, "(%d more connections not tracked: ferry serve --max-tracked-clients)\n", cs.Untracked)
	}
	return tw.Flush()
}
