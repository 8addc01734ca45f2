package dev.junction.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * The join, one instance per task: each step event updates its workflow's
 * state in the task's RocksDB store, and a decision forwards one outcome
 * record, as junction decides (README, "Join conditions"):
 * `completed` once every step succeeded, `failed` at the first failed step
 * (the succeeded ones to compensate), `timed_out` when the deadline passes
 * first, `compensated` once every step to compensate reported so. A repeated
 * event ID changes nothing; a decided workflow is remembered for the
 * retention, then deleted. Deadlines and purges fire from a wall-clock
 * punctuator over an in-memory index of the task's timers, rebuilt from the
 * store when the task starts.
 */
final class WorkflowJoin implements Processor<String, byte[], String, byte[]> {
    static final String STORE = "workflows";
    static final String OUTCOMES = "outcomes";
    static final String DEAD_LETTERS = "dead-letters";

    private static final JsonFactory JSON = new JsonFactory();
    private static final DateTimeFormatter TIME =
            DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss.SSS'Z'").withZone(ZoneOffset.UTC);

    private final Map<String, List<String>> workflows;
    private final long deadlineMs;
    private final long retentionMs;
    private ProcessorContext<String, byte[]> context;
    private KeyValueStore<String, byte[]> store;
    /** When each workflow's next timer is due (its deadline, or the end of its retention), by time. */
    private final TreeMap<Long, List<String>> timers = new TreeMap<>();

    WorkflowJoin(Map<String, List<String>> workflows, long deadlineMs, long retentionMs) {
        this.workflows = workflows;
        this.deadlineMs = deadlineMs;
        this.retentionMs = retentionMs;
    }

    @Override
    public void init(ProcessorContext<String, byte[]> context) {
        this.context = context;
        this.store = context.getStateStore(STORE);
        try (KeyValueIterator<String, byte[]> all = store.all()) {
            while (all.hasNext()) {
                KeyValue<String, byte[]> kv = all.next();
                schedule(kv.key, WorkflowState.decode(kv.value));
            }
        }
        context.schedule(Duration.ofSeconds(1), PunctuationType.WALL_CLOCK_TIME, this::fireTimers);
    }

    @Override
    public void process(Record<String, byte[]> record) {
        StepEvent e;
        try {
            e = StepEvent.parse(record.value(), record.timestamp());
        } catch (StepEvent.BadInput bad) {
            deadLetter(record, bad.reason, bad.getMessage());
            return;
        }
        List<String> steps = workflows.get(e.workflowType);
        if (steps == null) {
            deadLetter(record, "unknown_workflow_type", "workflow_type \"" + e.workflowType + "\" is not configured");
            return;
        }
        if (!steps.contains(e.step)) {
            deadLetter(record, "unknown_step", "step \"" + e.step + "\" is not a step of " + e.workflowType);
            return;
        }
        byte[] stored = store.get(e.workflowId);
        WorkflowState s;
        if (stored == null) {
            s = new WorkflowState();
            s.workflowType = e.workflowType;
            s.startedAtMs = e.occurredAtMs;
            s.lastEventAtMs = e.occurredAtMs;
        } else {
            s = WorkflowState.decode(stored);
        }
        long now = Math.max(context.currentStreamTimeMs(), record.timestamp());
        // A deadline that passed before this event was seen decides first.
        boolean timedOut = s.isOpen() && s.startedAtMs + deadlineMs <= now;
        if (timedOut) {
            timeOut(e.workflowId, s, steps, now);
        }
        boolean repeat = e.eventId != null ? s.eventIds.contains(e.eventId) : seenWithoutId(s, e);
        if (repeat || s.isFinal()) {
            if (timedOut) {
                schedule(e.workflowId, s);
                store.put(e.workflowId, s.encode());
            }
            return;
        }
        long startedBefore = s.startedAtMs;
        take(s, e);
        boolean decided = false;
        if (s.isOpen()) {
            long until = s.startedAtMs + deadlineMs;
            int succeeded = 0, failed = 0;
            for (WorkflowState.Step st : s.steps) {
                if (st.occurredAtMs <= until) {
                    succeeded += st.work == StepEvent.SUCCEEDED ? 1 : 0;
                    failed += st.work == StepEvent.FAILED ? 1 : 0;
                }
            }
            byte outcome = succeeded >= steps.size() ? WorkflowState.COMPLETED
                    : failed > 0 ? WorkflowState.FAILED : WorkflowState.OPEN;
            if (outcome != WorkflowState.OPEN) {
                s.decision = outcome;
                s.decidedAtMs = now;
                decided = true;
                publish(e.workflowId, s, steps, outcome, s.lastEventAtMs);
            }
        }
        checkCompensated(e.workflowId, s, steps, now);
        // A new workflow's deadline, an earlier one, or the end of its retention.
        if (stored == null || timedOut || decided || s.startedAtMs < startedBefore) {
            schedule(e.workflowId, s);
        }
        store.put(e.workflowId, s.encode());
    }

    private static boolean seenWithoutId(WorkflowState s, StepEvent e) {
        WorkflowState.Step st = s.step(e.step);
        if (st == null) {
            return false;
        }
        return e.status == StepEvent.COMPENSATED ? st.compensatedAtMs >= 0 : st.work == e.status;
    }

    /** Takes a new report: its ID, its times, and its step's first status. */
    private static void take(WorkflowState s, StepEvent e) {
        WorkflowState.Step st = s.stepOrNew(e.step);
        boolean changes = e.status == StepEvent.COMPENSATED ? st.compensatedAtMs < 0 : st.work == 0;
        if (e.eventId != null && changes) {
            s.eventIds.add(e.eventId);
        }
        if (s.isOpen() && e.status != StepEvent.COMPENSATED) {
            s.startedAtMs = Math.min(s.startedAtMs, e.occurredAtMs);
            s.lastEventAtMs = Math.max(s.lastEventAtMs, e.occurredAtMs);
        }
        if (e.status == StepEvent.COMPENSATED) {
            if (st.compensatedAtMs < 0) {
                st.compensatedAtMs = e.occurredAtMs;
            }
        } else if (st.work == 0) {
            st.work = e.status;
            st.occurredAtMs = e.occurredAtMs;
            st.payload = e.payload;
        }
    }

    private void timeOut(String id, WorkflowState s, List<String> steps, long now) {
        long deadline = s.startedAtMs + deadlineMs;
        s.decision = WorkflowState.TIMED_OUT;
        s.decidedAtMs = deadline;
        publish(id, s, steps, WorkflowState.TIMED_OUT, deadline);
        checkCompensated(id, s, steps, now);
    }

    private void checkCompensated(String id, WorkflowState s, List<String> steps, long now) {
        if (s.decision == WorkflowState.OPEN || s.decision == WorkflowState.COMPLETED || s.compensatedAtMs >= 0) {
            return;
        }
        long finished = -1;
        for (WorkflowState.Step st : s.steps) {
            if (st.work == StepEvent.SUCCEEDED) {
                if (st.compensatedAtMs < 0) {
                    return;
                }
                finished = Math.max(finished, st.compensatedAtMs);
            }
        }
        if (finished < 0) {
            return;
        }
        s.compensatedAtMs = now;
        publish(id, s, steps, (byte) -1, finished);
    }

    private void fireTimers(long now) {
        while (!timers.isEmpty() && timers.firstKey() <= now) {
            for (String id : timers.pollFirstEntry().getValue()) {
                byte[] stored = store.get(id);
                if (stored == null) {
                    continue;
                }
                WorkflowState s = WorkflowState.decode(stored);
                if (s.isOpen() && s.startedAtMs + deadlineMs <= now) {
                    timeOut(id, s, workflows.getOrDefault(s.workflowType, List.of()), now);
                    store.put(id, s.encode());
                    schedule(id, s);
                } else if (!s.isOpen() && s.decidedAtMs + retentionMs <= now) {
                    store.delete(id);
                }
                // Otherwise a later timer of the same workflow is already scheduled.
            }
        }
    }

    /** Its next timer: the deadline while open, else the end of its retention. */
    private void schedule(String id, WorkflowState s) {
        long due = s.isOpen() ? s.startedAtMs + deadlineMs : s.decidedAtMs + retentionMs;
        timers.computeIfAbsent(due, t -> new ArrayList<>(1)).add(id);
    }

    /** Forwards one outcome record; `outcome` -1 is `compensated`. */
    private void publish(String id, WorkflowState s, List<String> steps, byte outcome, long finishedAtMs) {
        String kind = switch (outcome) {
            case WorkflowState.COMPLETED -> "completed";
            case WorkflowState.FAILED -> "failed";
            case WorkflowState.TIMED_OUT -> "timed_out";
            default -> "compensated";
        };
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(512);
        try (JsonGenerator g = JSON.createGenerator(bytes)) {
            g.writeStartObject();
            g.writeStringField("workflow_id", id);
            g.writeStringField("workflow_type", s.workflowType);
            g.writeStringField("outcome", kind);
            g.writeObjectFieldStart("steps");
            for (String name : steps) {
                WorkflowState.Step st = s.step(name);
                if (st == null || (st.work == 0)) {
                    continue;
                }
                boolean compensated = outcome == -1 && st.work == StepEvent.SUCCEEDED;
                g.writeObjectFieldStart(name);
                g.writeStringField("status", compensated ? "compensated" : StepEvent.statusName(st.work));
                g.writeStringField("occurred_at", TIME.format(java.time.Instant.ofEpochMilli(
                        compensated ? st.compensatedAtMs : st.occurredAtMs)));
                g.writeFieldName("payload");
                if (st.payload == null) {
                    g.writeNull();
                } else {
                    g.writeRawValue(new String(st.payload, StandardCharsets.UTF_8));
                }
                g.writeEndObject();
            }
            g.writeEndObject();
            writeNames(g, "failed_steps", s, steps, StepEvent.FAILED, false);
            writeNames(g, "missing", s, steps, (byte) 0, true);
            if (outcome == WorkflowState.COMPLETED) {
                g.writeArrayFieldStart("compensate");
                g.writeEndArray();
            } else {
                writeNames(g, "compensate", s, steps, StepEvent.SUCCEEDED, false);
            }
            g.writeStringField("started_at", TIME.format(java.time.Instant.ofEpochMilli(s.startedAtMs)));
            g.writeStringField("finished_at", TIME.format(java.time.Instant.ofEpochMilli(finishedAtMs)));
            g.writeNumberField("duration_ms", finishedAtMs - s.startedAtMs);
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        RecordHeaders headers = new RecordHeaders();
        headers.add("junction.outcome", StepEvent.utf8(kind));
        headers.add("junction.outcome.id", StepEvent.utf8(id + ":" + kind + ":" + s.startedAtMs));
        context.forward(new Record<>(id, bytes.toByteArray(), context.currentSystemTimeMs(), headers), OUTCOMES);
    }

    private static void writeNames(JsonGenerator g, String field, WorkflowState s, List<String> steps, byte work,
            boolean missing) throws IOException {
        g.writeArrayFieldStart(field);
        for (String name : steps) {
            WorkflowState.Step st = s.step(name);
            byte w = st == null ? 0 : st.work;
            if (missing ? w == 0 : w == work) {
                g.writeString(name);
            }
        }
        g.writeEndArray();
    }

    private void deadLetter(Record<String, byte[]> record, String reason, String detail) {
        RecordHeaders headers = new RecordHeaders();
        headers.add("junction.error", StepEvent.utf8(reason));
        headers.add("junction.error.detail", StepEvent.utf8(detail == null ? reason : detail));
        context.forward(record.withHeaders(headers), DEAD_LETTERS);
    }
}
