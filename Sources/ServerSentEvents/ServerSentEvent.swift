public import NIOCore

/// One Server-Sent Event (the fields Switchyard uses: `event`, `data`, `id`).
public struct ServerSentEvent: Sendable, Hashable {
    /// The `event:` field, or `nil` for the default `message` type.
    public var event: String?
    /// The `data:` lines joined with `\n`.
    public var data: ByteBuffer
    public var id: String?

    public init(event: String? = nil, data: ByteBuffer, id: String? = nil) {
        self.event = event
        self.data = data
        self.id = id
    }

    public init(event: String? = nil, data: String) {
        self.init(event: event, data: ByteBuffer(string: data))
    }

    /// The data as text.
    public var dataString: String { String(buffer: data) }

    /// Writes the event in wire form (`event:` and `data:` lines, then a blank line).
    public func write(into buffer: inout ByteBuffer) {
        if let event {
            buffer.writeStaticString("event: ")
            buffer.writeString(event)
            buffer.writeStaticString("\n")
        }
        if let id {
            buffer.writeStaticString("id: ")
            buffer.writeString(id)
            buffer.writeStaticString("\n")
        }
        var view = data.readableBytesView[...]
        repeat {
            let line = view.firstIndex(of: UInt8(ascii: "\n")).map { view[..<$0] } ?? view
            buffer.writeStaticString("data: ")
            buffer.writeBytes(line)
            buffer.writeStaticString("\n")
            view = view[line.endIndex...].dropFirst()
        } while !view.isEmpty
        buffer.writeStaticString("\n")
    }
}

/// Why an event stream could not be decoded.
public enum SSEDecodingError: Error, Sendable, Hashable {
    /// One event grew beyond the decoder's cap.
    case eventTooLarge(limit: Int)
}

/// An incremental Server-Sent Events decoder (WHATWG HTML §9.2.6).
///
/// Feed it bytes as they arrive, split anywhere; it returns each event once its blank line has arrived.
/// Lines end in `\n`, `\r\n` or `\r`; lines starting with `:` are comments; several `data:` lines are
/// joined with `\n`; an event without data is dropped.
public struct SSEDecoder: Sendable {
    /// The largest event (bytes of its pending lines) accepted.
    public let maximumEventSize: Int

    private var pending: [UInt8] = []
    private var lastWasCR = false
    private var event: String?
    private var data: [UInt8] = []
    private var hasData = false
    private var id: String?
    private var eventSize = 0

    public init(maximumEventSize: Int = 1 << 20) {
        self.maximumEventSize = maximumEventSize
    }

    /// Decodes the events completed by `bytes`.
    /// - Throws: `SSEDecodingError.eventTooLarge` once an event exceeds the cap.
    public mutating func feed(_ bytes: ByteBuffer) throws(SSEDecodingError) -> [ServerSentEvent] {
        var events: [ServerSentEvent] = []
        for byte in bytes.readableBytesView {
            if lastWasCR {
                lastWasCR = false
                if byte == UInt8(ascii: "\n") { continue }
            }
            switch byte {
            case UInt8(ascii: "\n"):
                if let event = endLine() { events.append(event) }
            case UInt8(ascii: "\r"):
                lastWasCR = true
                if let event = endLine() { events.append(event) }
            default:
                pending.append(byte)
                eventSize += 1
                if eventSize > maximumEventSize { throw .eventTooLarge(limit: maximumEventSize) }
            }
        }
        return events
    }

    /// Ends the stream; a final event without its blank line is discarded, as the standard says.
    public mutating func finish() {
        pending.removeAll()
        reset()
    }

    private mutating func reset() {
        event = nil
        data.removeAll(keepingCapacity: true)
        hasData = false
        id = nil
        eventSize = 0
    }

    private mutating func endLine() -> ServerSentEvent? {
        defer { pending.removeAll(keepingCapacity: true) }
        if pending.isEmpty {
            defer { reset() }
            guard hasData else { return nil }
            var buffer = ByteBuffer()
            buffer.writeBytes(data)
            return ServerSentEvent(event: event, data: buffer, id: id)
        }
        if pending[0] == UInt8(ascii: ":") { return nil }
        let colon = pending.firstIndex(of: UInt8(ascii: ":"))
        let name = pending[..<(colon ?? pending.endIndex)]
        var value = colon.map { pending[($0 + 1)...] } ?? []
        if value.first == UInt8(ascii: " ") { value = value.dropFirst() }
        switch String(decoding: name, as: UTF8.self) {
        case "data":
            if hasData { data.append(UInt8(ascii: "\n")) }
            data.append(contentsOf: value)
            hasData = true
        case "event":
            event = String(decoding: value, as: UTF8.self)
        case "id":
            id = String(decoding: value, as: UTF8.self)
        default:
            break  // `retry:` and unknown fields are ignored.
        }
        return nil
    }
}
