public import Logging
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A log handler writing one line per message to standard error, from a thread of its own.
///
/// Writing to standard error can block (a pipe whose reader lags, a full terminal): on an event loop that would stall
/// every connection of the loop. Lines are formatted where they are logged and handed to one writer thread, in
/// order; past `maximumPending` lines waiting the newest are dropped, and the writer reports how many.
///
/// Unlike swift-log's `StreamLogHandler`, setting metadata costs one dictionary insert: the line is formatted only
/// when a message is actually logged. (Hummingbird sets `hb.request.id` on every request, and `StreamLogHandler`
/// re-renders all metadata on every set, which showed up at 4% of the gateway's CPU under load.)
public struct LineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    /// The writer: one thread, so lines keep their order.
    private static let writer: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
        return pool
    }()
    private static let pending = Atomic<Int>(0)
    private static let dropped = Atomic<Int>(0)
    /// Lines waiting for the writer at most.
    public static let maximumPending = 10_000

    public init(label: String, metadataProvider: Logger.MetadataProvider? = nil) {
        self.label = label
        self.metadataProvider = metadataProvider
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        var line = "\(Self.timestamp()) \(event.level) \(label):"
        for key in merged.keys.sorted() { line += " \(key)=\(merged[key]!)" }
        line += " \(event.message)\n"
        let text = line
        guard Self.pending.add(1, ordering: .relaxed).newValue <= Self.maximumPending else {
            Self.pending.subtract(1, ordering: .relaxed)
            Self.dropped.add(1, ordering: .relaxed)
            return
        }
        Self.writer.submit { _ in
            let lost = Self.dropped.exchange(0, ordering: .relaxed)
            if lost > 0 { Self.writeAll("\(Self.timestamp()) warning switchyard: \(lost) log lines dropped (writer behind)\n") }
            Self.writeAll(text)
            Self.pending.subtract(1, ordering: .relaxed)
        }
    }

    /// Waits up to `timeout` for the lines already logged to be written (before the process exits).
    public static func flush(timeout: Duration = .seconds(2)) {
        let deadline = ContinuousClock.now + timeout
        while pending.load(ordering: .relaxed) > 0 && ContinuousClock.now < deadline {
            usleep(1000)
        }
    }

    private static func writeAll(_ line: String) {
        var bytes = Array(line.utf8)
        bytes.withUnsafeMutableBytes { buffer in
            guard let base = buffer.baseAddress else { return }
            var offset = 0
            while offset < buffer.count {
                let written = write(2, base + offset, buffer.count - offset)
                if written <= 0 { break }
                offset += written
            }
        }
    }

    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var time = now.tv_sec
        var parts = tm()
        gmtime_r(&time, &parts)
        func pad(_ value: Int32, _ width: Int = 2) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday))T"
            + "\(pad(parts.tm_hour)):\(pad(parts.tm_min)):\(pad(parts.tm_sec)).\(pad(Int32(now.tv_nsec / 1_000_000), 3))Z"
    }
}
