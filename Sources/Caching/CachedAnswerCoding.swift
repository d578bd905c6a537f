import NIOCore
import SwitchyardCore
import SwitchyardModels

/// A cached answer as bytes, for a store shared by gateway instances (and by gateway versions: an entry another
/// version wrote is either understood or a miss, never an error).
///
/// Layout: the magic `SYC1` (format version 1), a 4-byte big-endian header length, a JSON header, then the answer's
/// body in the format the header names. Times are wall-clock Unix milliseconds: a process's clock instants mean
/// nothing to another process. Every number read back is range-checked; anything out of shape decodes to nil.
public enum CachedAnswerCoding {
    static let magic: [UInt8] = Array("SYC1".utf8)
    /// Largest header accepted back.
    static let maximumHeaderBytes = 64 * 1024

    /// The bytes of `answer`, with `now` (this process's clock) and `wallNow` (Unix milliseconds) the same moment.
    public static func encode(_ answer: CachedAnswer, now: ContinuousClock.Instant, wallNow: Int64) -> [UInt8] {
        let format: APIFormat
        let body: [UInt8]
        if let raw = answer.completion.raw {
            format = raw.format
            body = Array(raw.body.readableBytesView)
        } else if let response = answer.completion.response {
            // A canonical answer (a stream assembled, or a translation): Anthropic's form keeps every block.
            format = .anthropic
            body = AnthropicFormat.renderResponse(response).serialized()
        } else {
            format = .openAI
            body = []
        }
        let usage = answer.completion.usage
        var fields: [String: JSONValue] = [
            "tenant": .string(answer.tenant), "model": .string(answer.model), "cost": .int(answer.cost.value),
            "stored_ms": .int(wallNow - milliseconds(now - answer.storedAt)),
            "expires_ms": .int(wallNow + milliseconds(answer.expiresAt - now)),
            "format": .string(format.rawValue),
            "usage": .array([usage.inputTokens, usage.outputTokens, usage.cacheReadTokens, usage.cacheWriteTokens].map { .int(Int64($0)) }),
        ]
        // Optional, so that a version without it reads the entry as one that expires at `expires_ms` (a miss once
        // stale), and this version reads older entries as kept no longer than their TTL.
        if answer.retainedUntil > answer.expiresAt { fields["retain_ms"] = .int(wallNow + milliseconds(answer.retainedUntil - now)) }
        let header: JSONValue = .object(fields)
        let headerBytes = header.serialized()
        var bytes = magic
        bytes.reserveCapacity(8 + headerBytes.count + body.count)
        let length = UInt32(headerBytes.count)
        bytes += [UInt8(length >> 24), UInt8((length >> 16) & 0xFF), UInt8((length >> 8) & 0xFF), UInt8(length & 0xFF)]
        bytes += headerBytes
        bytes += body
        return bytes
    }

    /// The answer in `bytes`, or nil when they are not a version-1 entry, are malformed, or are no longer kept by `wallNow`.
    public static func decode(_ bytes: [UInt8], now: ContinuousClock.Instant, wallNow: Int64) -> CachedAnswer? {
        guard bytes.count >= 8, Array(bytes[0..<4]) == magic else { return nil }
        let length = Int(bytes[4]) << 24 | Int(bytes[5]) << 16 | Int(bytes[6]) << 8 | Int(bytes[7])
        guard length <= maximumHeaderBytes, 8 + length <= bytes.count,
              let header = try? JSONValue.parse(bytes[8..<(8 + length)]),
              let tenant = header["tenant"]?.stringValue, let model = header["model"]?.stringValue,
              let cost = header["cost"]?.intValue, cost >= 0,
              let stored = header["stored_ms"]?.intValue, let expires = header["expires_ms"]?.intValue,
              let format = header["format"]?.stringValue.flatMap(APIFormat.init(rawValue:)),
              let counts = header["usage"]?.arrayValue?.compactMap(\.intValue), counts.count == 4,
              counts.allSatisfy({ (0...Int64(Usage.maximumTokens)).contains($0) })
        else { return nil }
        // An entry from a clock far off, or one no longer kept, is a miss; one past its TTL but kept (for a
        // degradation policy's stale answers) is returned with its expiry in the past.
        let day: Int64 = 86_400_000
        let retain = header["retain_ms"]?.intValue ?? expires
        guard retain >= expires, retain > wallNow, retain - wallNow <= 366 * day, expires - wallNow <= 366 * day,
              stored <= wallNow + day, wallNow - stored <= 366 * day
        else {
            return nil
        }
        let body = ByteBuffer(bytes: bytes[(8 + length)...])
        let usage = Usage(inputTokens: Int(counts[0]), outputTokens: Int(counts[1]), cacheReadTokens: Int(counts[2]),
                          cacheWriteTokens: Int(counts[3]))
        return CachedAnswer(tenant: tenant, model: model, completion: Completion(usage: usage, raw: (format, body)),
                            cost: NanoUSD(cost), storedAt: now - .milliseconds(wallNow - stored),
                            expiresAt: now + .milliseconds(expires - wallNow), retainedUntil: now + .milliseconds(retain - wallNow))
    }

    /// Whole milliseconds of `duration`, saturating far from overflow.
    public static func milliseconds(_ duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        let (whole, overflow) = seconds.multipliedReportingOverflow(by: 1000)
        guard !overflow else { return seconds < 0 ? -(Int64.max / 2) : Int64.max / 2 }
        return whole + attoseconds / 1_000_000_000_000_000
    }
}
