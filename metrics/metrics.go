// Package metrics defines pgaudit-cdc's Prometheus metrics, on a registry of
// its own, and the HTTP handler serving them with the health endpoints.
package metrics

import (
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pgaudit-cdc/pgaudit-cdc/envelope"
	"github.com/pgaudit-cdc/pgaudit-cdc/internal/version"
	"github.com/pgaudit-cdc/pgaudit-cdc/publish"
)

// Metrics holds every metric family. Labels come from small fixed sets:
// table, operation, kind, outcome and reason; never row data, LSNs or URLs.
type Metrics struct {
	Registry *prometheus.Registry

	EventsDelivered    *prometheus.CounterVec // table, operation, kind
	EventsSkipped      prometheus.Counter
	RelayedEvents      prometheus.Counter       // pgaudit-cdc relay
	PublishDuration    *prometheus.HistogramVec // outcome
	CommitToAccepted   prometheus.Histogram
	Retries            *prometheus.CounterVec // reason
	DeadLetters        *prometheus.CounterVec // table
	DeadLettersPending prometheus.Gauge
	ReplicationLag     prometheus.Gauge
	RetainedWAL        prometheus.Gauge
	ConfirmedLSN       prometheus.Gauge
	LastCommitTime     prometheus.Gauge
	DatabaseUp         prometheus.Gauge
	SpineUp            prometheus.Gauge
	SlotActive         prometheus.Gauge
	Reconnects         prometheus.Counter
	WatchChanges       prometheus.Counter
	// Integrity: holes in the capture, control messages that failed
	// authentication, replica identities weakened under a watch.
	GapsDetected            *prometheus.CounterVec // reason
	GapPending              prometheus.Gauge
	UnauthenticatedControl  *prometheus.CounterVec // prefix
	ReplicaIdentityWeakened *prometheus.CounterVec // table
	UnloggedPartitions      prometheus.Counter
	UnauditedTruncates      *prometheus.CounterVec // state
	// The authenticated trail (package trail): seals written, the newest
	// one's time, events delivered but not sealed yet, and forgeries the
	// read-back found under the agent's keys.
	Seals             prometheus.Counter
	LastSealTime      prometheus.Gauge
	UnsealedEvents    prometheus.Gauge
	ForgeriesDetected prometheus.Counter
	SpineWindow       prometheus.Gauge
	// Transactions PostgreSQL streamed before their commit (package
	// spool): how many, by outcome, how many are open, and what the
	// agent's own spill holds and ever wrote.
	StreamedTransactions *prometheus.CounterVec // outcome
	StreamingOpen        prometheus.Gauge
	SpillMemoryBytes     prometheus.Gauge
	SpillDiskBytes       prometheus.Gauge
	SpilledBytes         prometheus.Counter
	SpillFull            prometheus.Counter
}

// New registers all families, with the Go and process collectors.
func New() *Metrics {
	m := &Metrics{Registry: prometheus.NewRegistry()}
	v, commit, gov := version.Info()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "pgaudit_cdc_build_info",
		Help:        "Build information; always 1.",
		ConstLabels: prometheus.Labels{"version": v, "commit": commit, "goversion": gov},
	})
	info.Set(1)
	for _, group := range [][]prometheus.Collector{m.delivery(), m.replication(), m.integrity(), m.spill(),
		{info, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})}} {
		m.Registry.MustRegister(group...)
	}
	return m
}

// delivery makes the families of delivery to the spine or stream.
func (m *Metrics) delivery() []prometheus.Collector {
	m.EventsDelivered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgaudit_cdc_events_delivered_total",
		Help: "Events accepted by the sink (201 from the spine), by table, operation and kind.",
	}, []string{"table", "operation", "kind"})
	m.EventsSkipped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgaudit_cdc_events_skipped_duplicate_total",
		Help: "Replayed events not sent again because the spine already held them.",
	})
	m.RelayedEvents = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgaudit_cdc_relayed_events_total",
		Help: "Events pgaudit-cdc relay delivered from the JetStream stream into the spine and acknowledged.",
	})
	m.PublishDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pgaudit_cdc_publish_duration_seconds",
		Help:    "Duration of one POST /events, by outcome (201, 201_unconfirmed: a 201 whose body is not the stored event, 3xx, 4xx, 5xx, 408, 429, other, error).",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"outcome"})
	m.CommitToAccepted = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "pgaudit_cdc_commit_to_accepted_seconds",
		Help:    "Time from a change's commit in PostgreSQL to its acceptance by the sink.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	})
	m.Retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgaudit_cdc_publish_retries_total",
		Help: "Waits before retrying delivery, by reason (connection, 5xx, 408, 429, unexpected, unconfirmed, read_back, dead_letter_store, anchor_record, housekeeping_connect, and refused_auth, refused_spine, refused_redirect while the spine refuses this client as a whole).",
	}, []string{"reason"})
	m.DeadLetters = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgaudit_cdc_dead_letters_total",
		Help: "Events the spine refused, stored in pgaudit_cdc.dead_letters, by table.",
	}, []string{"table"})
	m.DeadLettersPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_dead_letters_pending",
		Help: "Rows in pgaudit_cdc.dead_letters for this slot, awaiting retry or discard.",
	})
	m.SpineWindow = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_spine_window",
		Help: "Requests the agent may have in flight to the spine: sized from the round trip and the spine's rate, at most --max-in-flight.",
	})
	return []prometheus.Collector{m.EventsDelivered, m.EventsSkipped, m.RelayedEvents, m.PublishDuration,
		m.CommitToAccepted, m.Retries, m.DeadLetters, m.DeadLettersPending, m.SpineWindow}
}

// replication makes the families of the replication session and the slot.
func (m *Metrics) replication() []prometheus.Collector {
	m.ReplicationLag = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_replication_lag_bytes",
		Help: "Server WAL end minus the LSN confirmed to the server.",
	})
	m.RetainedWAL = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_slot_retained_wal_bytes",
		Help: "WAL the slot keeps on the server (current WAL LSN minus the slot's restart_lsn).",
	})
	m.ConfirmedLSN = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_confirmed_lsn",
		Help: "The LSN last confirmed to the server, as a number.",
	})
	m.LastCommitTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_last_delivered_commit_timestamp_seconds",
		Help: "Commit time of the last delivered change, in Unix seconds.",
	})
	m.DatabaseUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_database_connected",
		Help: "1 while the replication connection is streaming.",
	})
	m.SpineUp = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_spine_up",
		Help: "1 when the last request to the spine got a working spine's answer; 0 after no answer, a refusal of this client (3xx, 401, 403, 404, ...), a 201 that is not the stored event, or a read-back or health check other than 200.",
	})
	m.SlotActive = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_slot_active",
		Help: "1 when this instance holds the slot; 0 while it waits as a standby.",
	})
	m.Reconnects = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgaudit_cdc_replication_reconnects_total",
		Help: "Replication sessions that ended with an error and were restarted.",
	})
	m.WatchChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgaudit_cdc_watch_changes_total",
		Help: "Watch, re-watch and unwatch changes applied from the stream.",
	})
	return []prometheus.Collector{m.ReplicationLag, m.RetainedWAL, m.ConfirmedLSN, m.LastCommitTime,
		m.DatabaseUp, m.SpineUp, m.SlotActive, m.Reconnects, m.WatchChanges}
}

// integrity makes the families of holes, forged or unauthorised input and
// the signed trail.
func (m *Metrics) integrity() []prometheus.Collector {
	m.GapsDetected = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgaudit_cdc_gaps_detected_total",
		Help: "Holes in the capture detected (slot dropped, invalidated, advanced, or lost in a failover or restore), by reason.",
	}, []string{"reason"})
	m.GapPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_gap_pending",
		Help: "1 while a detected capture gap awaits an operator's consent (capture is stopped).",
	})
	m.UnauthenticatedControl = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgaudit_cdc_unauthenticated_control_messages_total",
		Help: "Control messages (skip, backfill) ignored because no authorising pgaudit_cdc.control row was written with them, by prefix.",
	}, []string{"prefix"})
	m.ReplicaIdentityWeakened = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgaudit_cdc_replica_identity_weakened_total",
		Help: "Watched tables seen streaming without REPLICA IDENTITY FULL (old rows incomplete), by table.",
	}, []string{"table"})
	m.UnloggedPartitions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgaudit_cdc_unlogged_partitions_total",
		Help: "Times the housekeeping found a partition of a watched table UNLOGGED (its changes not in the WAL, so not in the trail; an UNLOGGED event each): the DDL event triggers are missing, or could not set it LOGGED.",
	})
	m.UnauditedTruncates = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgaudit_cdc_unaudited_truncates_total",
		Help: "Times the housekeeping found a partition of a watched table without the trigger that audits its TRUNCATE, by state: dropped or disabled (by its owner; put back, and the time without it declared by an UNAUDITED event), failed (it cannot be created: counted every round, declared once). The DDL event triggers put it back in the DDL's transaction.",
	}, []string{"state"})
	m.Seals = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgaudit_cdc_seals_total",
		Help: "Signed seals written over the delivered events (SEAL events, each recorded as the anchor in the audited database).",
	})
	m.LastSealTime = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_last_seal_timestamp_seconds",
		Help: "Unix time of the newest seal.",
	})
	m.UnsealedEvents = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_unsealed_events",
		Help: "Events delivered but not sealed yet (sealed within --seal-interval; nothing is confirmed to PostgreSQL beyond the last seal).",
	})
	m.ForgeriesDetected = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgaudit_cdc_forgeries_detected_total",
		Help: "Events found in the spine under one of the agent's idempotency keys but with other content: another producer forged them. The real event is delivered anyway.",
	})
	return []prometheus.Collector{m.GapsDetected, m.GapPending, m.UnauthenticatedControl, m.ReplicaIdentityWeakened, m.UnloggedPartitions,
		m.UnauditedTruncates, m.Seals, m.LastSealTime, m.UnsealedEvents, m.ForgeriesDetected}
}

// spill makes the families of transactions streamed while in progress.
func (m *Metrics) spill() []prometheus.Collector {
	m.StreamedTransactions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgaudit_cdc_streamed_transactions_total",
		Help: "Transactions PostgreSQL streamed while in progress (protocol 2, too large for logical_decoding_work_mem), by outcome: committed (delivered) or aborted (discarded).",
	}, []string{"outcome"})
	m.StreamingOpen = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_streamed_transactions_open",
		Help: "Streamed transactions received in part and not committed or aborted yet.",
	})
	m.SpillMemoryBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_spill_memory_bytes",
		Help: "Bytes of open streamed transactions held in memory (at most --spill-memory).",
	})
	m.SpillDiskBytes = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "pgaudit_cdc_spill_disk_bytes",
		Help: "Bytes of open streamed transactions in the spill directory (at most --spill-max-bytes).",
	})
	m.SpilledBytes = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgaudit_cdc_spilled_bytes_total",
		Help: "Bytes ever written to the spill directory.",
	})
	m.SpillFull = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgaudit_cdc_spill_full_total",
		Help: "Sessions stopped because a streamed transaction did not fit in the spill directory (--spill-max-bytes or the disk); nothing is lost, capture retries.",
	})
	return []prometheus.Collector{m.StreamedTransactions, m.StreamingOpen, m.SpillMemoryBytes, m.SpillDiskBytes,
		m.SpilledBytes, m.SpillFull}
}

// Readiness is set by the agent: ready when the replication connection is
// streaming and the sink is reachable.
type Readiness struct {
	database atomic.Bool
	sink     atomic.Bool
}

// SetDatabase records whether replication is streaming.
func (r *Readiness) SetDatabase(up bool) { r.database.Store(up) }

// SetSink records whether the sink's last answer was a working sink's (see
// publish.Hooks.SpineUp).
func (r *Readiness) SetSink(up bool) { r.sink.Store(up) }

// Ready reports both, with the reason when not ready.
func (r *Readiness) Ready() (bool, string) {
	switch {
	case !r.database.Load():
		return false, "replication connection not streaming"
	case !r.sink.Load():
		return false, "spine unreachable or refusing this client (see the logs)"
	}
	return true, "ok"
}

// Handler serves /metrics, /healthz (the process is alive) and /readyz
// (replication streaming and spine reachable: 503 otherwise).
func (m *Metrics) Handler(ready *Readiness) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{Registry: m.Registry}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, reason := ready.Ready()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"status":"not ready","reason":"` + reason + `"}` + "\n"))
			return
		}
		_, _ = w.Write([]byte(`{"status":"ready"}` + "\n"))
	})
	return mux
}

// PublishHooks connects the spine client's observations to these metrics
// and to ready: the one place where delivery is wired to metrics, as the
// agent's own are through the *Metrics it is given.
func (m *Metrics) PublishHooks(ready *Readiness) publish.Hooks {
	return publish.Hooks{
		Post:    func(outcome string, d time.Duration) { m.PublishDuration.WithLabelValues(outcome).Observe(d.Seconds()) },
		Retry:   func(reason string, _ time.Duration) { m.Retries.WithLabelValues(reason).Inc() },
		Skipped: func(*envelope.Event) { m.EventsSkipped.Inc() },
		Forgery: func(*envelope.Event, int64) { m.ForgeriesDetected.Inc() },
		Window:  func(n int) { m.SpineWindow.Set(float64(n)) },
		SpineUp: func(up bool) {
			ready.SetSink(up)
			if up {
				m.SpineUp.Set(1)
			} else {
				m.SpineUp.Set(0)
			}
		},
	}
}
