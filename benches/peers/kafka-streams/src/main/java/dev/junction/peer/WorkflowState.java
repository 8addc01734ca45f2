package dev.junction.peer;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.DataInputStream;
import java.io.DataOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.ArrayList;
import java.util.List;

/**
 * One workflow's state, as junction keeps it: its steps' first reports, the
 * event IDs seen, its times and its decision. Stored in the RocksDB store
 * (and its changelog) in a compact binary form.
 */
final class WorkflowState {
    static final byte OPEN = 0, COMPLETED = 1, FAILED = 2, TIMED_OUT = 3;

    static final class Step {
        final String name;
        /** SUCCEEDED or FAILED once reported, else 0. */
        byte work;
        long occurredAtMs;
        byte[] payload;
        /** -1 until the step reports `compensated`. */
        long compensatedAtMs = -1;

        Step(String name) {
            this.name = name;
        }
    }

    String workflowType;
    long startedAtMs;
    long lastEventAtMs;
    final List<Step> steps = new ArrayList<>(4);
    final List<String> eventIds = new ArrayList<>(4);
    byte decision = OPEN;
    long decidedAtMs;
    /** -1 until `compensated` is published. */
    long compensatedAtMs = -1;

    boolean isOpen() {
        return decision == OPEN;
    }

    /** Final: no event changes it any more. */
    boolean isFinal() {
        return decision == COMPLETED || compensatedAtMs >= 0;
    }

    Step step(String name) {
        for (Step s : steps) {
            if (s.name.equals(name)) {
                return s;
            }
        }
        return null;
    }

    Step stepOrNew(String name) {
        Step s = step(name);
        if (s == null) {
            s = new Step(name);
            steps.add(s);
        }
        return s;
    }

    byte[] encode() {
        ByteArrayOutputStream bytes = new ByteArrayOutputStream(160);
        try (DataOutputStream out = new DataOutputStream(bytes)) {
            out.writeUTF(workflowType);
            out.writeLong(startedAtMs);
            out.writeLong(lastEventAtMs);
            out.writeByte(decision);
            out.writeLong(decidedAtMs);
            out.writeLong(compensatedAtMs);
            out.writeByte(steps.size());
            for (Step s : steps) {
                out.writeUTF(s.name);
                out.writeByte(s.work);
                out.writeLong(s.occurredAtMs);
                out.writeLong(s.compensatedAtMs);
                out.writeInt(s.payload == null ? -1 : s.payload.length);
                if (s.payload != null) {
                    out.write(s.payload);
                }
            }
            out.writeByte(eventIds.size());
            for (String id : eventIds) {
                out.writeUTF(id);
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return bytes.toByteArray();
    }

    static WorkflowState decode(byte[] bytes) {
        WorkflowState w = new WorkflowState();
        try (DataInputStream in = new DataInputStream(new ByteArrayInputStream(bytes))) {
            w.workflowType = in.readUTF();
            w.startedAtMs = in.readLong();
            w.lastEventAtMs = in.readLong();
            w.decision = in.readByte();
            w.decidedAtMs = in.readLong();
            w.compensatedAtMs = in.readLong();
            int n = in.readUnsignedByte();
            for (int i = 0; i < n; i++) {
                Step s = new Step(in.readUTF());
                s.work = in.readByte();
                s.occurredAtMs = in.readLong();
                s.compensatedAtMs = in.readLong();
                int len = in.readInt();
                if (len >= 0) {
                    s.payload = in.readNBytes(len);
                }
                w.steps.add(s);
            }
            int ids = in.readUnsignedByte();
            for (int i = 0; i < ids; i++) {
                w.eventIds.add(in.readUTF());
            }
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return w;
    }
}
