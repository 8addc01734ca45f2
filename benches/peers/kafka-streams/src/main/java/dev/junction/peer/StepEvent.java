package dev.junction.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonProcessingException;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.format.DateTimeParseException;
import java.util.Arrays;

/**
 * One step event, as junction reads it (README, "Step events"): decoded with
 * Jackson's streaming parser, the payload kept as its raw JSON bytes.
 */
final class StepEvent {
    static final byte SUCCEEDED = 1;
    static final byte FAILED = 2;
    static final byte COMPENSATED = 4;

    private static final JsonFactory JSON = new JsonFactory();

    final String workflowId;
    final String workflowType;
    final String step;
    final byte status;
    /** Null when the producer sent none. */
    final String eventId;
    final long occurredAtMs;
    /** The payload's JSON text, or null. */
    final byte[] payload;

    private StepEvent(String workflowId, String workflowType, String step, byte status, String eventId,
            long occurredAtMs, byte[] payload) {
        this.workflowId = workflowId;
        this.workflowType = workflowType;
        this.step = step;
        this.status = status;
        this.eventId = eventId;
        this.occurredAtMs = occurredAtMs;
        this.payload = payload;
    }

    /** Bad input: the reason code and a detail, for the dead-letter topic. */
    static final class BadInput extends Exception {
        final String reason;

        BadInput(String reason, String detail) {
            super(detail, null, false, false);
            this.reason = reason;
        }
    }

    /** Decodes a record's value; `timestampMs` stands in for a missing `occurred_at`. */
    static StepEvent parse(byte[] value, long timestampMs) throws BadInput {
        if (value == null) {
            throw new BadInput("invalid_json", "the record has no value");
        }
        String workflowId = null, workflowType = null, step = null, status = null, eventId = null, occurred = null;
        byte[] payload = null;
        try (JsonParser p = JSON.createParser(value)) {
            if (p.nextToken() != JsonToken.START_OBJECT) {
                throw new BadInput("invalid_json", "the value is not a JSON object");
            }
            while (p.nextToken() == JsonToken.FIELD_NAME) {
                String field = p.currentName();
                JsonToken t = p.nextToken();
                switch (field) {
                    case "workflow_id" -> workflowId = text(p, t, field);
                    case "workflow_type" -> workflowType = text(p, t, field);
                    case "step" -> step = text(p, t, field);
                    case "status" -> status = text(p, t, field);
                    case "event_id" -> eventId = t == JsonToken.VALUE_NULL ? null : text(p, t, field);
                    case "occurred_at" -> occurred = t == JsonToken.VALUE_NULL ? null : text(p, t, field);
                    case "payload" -> {
                        long start = p.currentTokenLocation().getByteOffset();
                        // Past the whole value: an object's or array's end, a string's closing quote.
                        p.skipChildren();
                        p.finishToken();
                        long end = p.currentLocation().getByteOffset();
                        payload = t == JsonToken.VALUE_NULL ? null : Arrays.copyOfRange(value, (int) start, (int) end);
                    }
                    default -> p.skipChildren();
                }
            }
        } catch (JsonProcessingException e) {
            throw new BadInput("invalid_json", e.getOriginalMessage());
        } catch (IOException e) {
            throw new BadInput("invalid_json", e.getMessage());
        }
        require(workflowId, "workflow_id");
        require(workflowType, "workflow_type");
        require(step, "step");
        require(status, "status");
        byte s = switch (status) {
            case "succeeded" -> SUCCEEDED;
            case "failed" -> FAILED;
            case "compensated" -> COMPENSATED;
            default -> throw new BadInput("invalid_field", "status is \"" + status + "\"");
        };
        long at = timestampMs;
        if (occurred != null) {
            try {
                at = Instant.parse(occurred).toEpochMilli();
            } catch (DateTimeParseException e) {
                throw new BadInput("invalid_field", "occurred_at is \"" + occurred + "\"; expected an RFC 3339 time");
            }
        }
        return new StepEvent(workflowId, workflowType, step, s, eventId, at, payload);
    }

    private static String text(JsonParser p, JsonToken t, String field) throws IOException, BadInput {
        if (t != JsonToken.VALUE_STRING) {
            p.skipChildren();
            throw new BadInput("invalid_field", field + " is not a string");
        }
        return p.getText();
    }

    private static void require(String value, String field) throws BadInput {
        if (value == null || value.isEmpty()) {
            throw new BadInput("missing_field", field + " is missing");
        }
    }

    static String statusName(byte status) {
        return switch (status) {
            case SUCCEEDED -> "succeeded";
            case FAILED -> "failed";
            default -> "compensated";
        };
    }

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}
