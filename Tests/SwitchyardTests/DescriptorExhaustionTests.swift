import Foundation
import SwitchyardCore
import SwitchyardTestKit
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The gateway binary in its own process with few file descriptors: when clients hold them all, accepting backs
/// off instead of spinning a core, and the gateway serves again once they go. A process of its own because the
/// descriptor limit is process-wide (tests share no global state).
@Suite struct DescriptorExhaustionTests {
    static let binary: String = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/switchyard").path
    }()

    /// Starts a gateway process and waits for the port it prints; the caller terminates it.
    static func launch(_ executable: String, _ arguments: [String]) async throws -> (Process, Int) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        do {
            return (process, try await NIOThreadPoolRead.port(from: output.fileHandleForReading))
        } catch {
            process.terminate()
            throw error
        }
    }

    /// CPU seconds (user + system) the process has used, from `/proc`.
    static func cpuSeconds(_ pid: Int32) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command: state is field 3, utime field 14, stime field 15.
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    @Test func runningOutOfDescriptorsNeitherSpinsNorWedgesTheGateway() async throws {
        guard FileManager.default.isExecutableFile(atPath: Self.binary) else {
            Issue.record("build the switchyard product first: \(Self.binary) is missing")
            return
        }
        let (process, port) = try await Self.launch("/bin/sh", [
            "-c", "ulimit -n 96 && exec \"$0\" serve --port 0 --no-embeddings --mock-latency-scale 0 --log-level error", Self.binary,
        ])
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        // Far more connections than descriptors: the gateway keeps a reserve (past its bound a connection is answered 503
        // and closed), the kernel queues the rest; either way nothing spins and the process lives.
        var held: [RawConnection] = []
        for _ in 0..<160 { held.append(try RawConnection(port: port)) }
        try await Task.sleep(for: .milliseconds(300))
        let before = try #require(Self.cpuSeconds(process.processIdentifier))
        try await Task.sleep(for: .seconds(1))
        let after = try #require(Self.cpuSeconds(process.processIdentifier))
        #expect(after - before < 0.3, "the gateway used \(after - before) s of CPU in 1 s while out of descriptors")
        for connection in held { connection.close() }
        held.removeAll()
        // Served again once descriptors are free (the backoff retries accept).
        var served = false
        for _ in 0..<50 where !served {
            try await Task.sleep(for: .milliseconds(100))
            let connection = try RawConnection(port: port)
            try connection.send("GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
            served = (try? await connection.receive(until: { $0.hasSuffix("ok\n") })) != nil
        }
        #expect(served)
    }
}

/// Reads the port the gateway prints (`Switchyard listening on http://127.0.0.1:PORT`), off the cooperative pool.
enum NIOThreadPoolRead {
    static func port(from handle: FileHandle) async throws -> Int {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                var text = ""
                let deadline = Date().addingTimeInterval(30)
                while Date() < deadline {
                    let data = handle.availableData
                    if data.isEmpty { break }
                    text += String(decoding: data, as: UTF8.self)
                    if let range = text.range(of: "listening on http://127.0.0.1:") {
                        let digits = text[range.upperBound...].prefix { $0.isNumber }
                        if let port = Int(digits), text[range.upperBound...].count > digits.count {
                            continuation.resume(returning: port)
                            return
                        }
                    }
                }
                continuation.resume(throwing: RawConnectionError.failed("no port in: \(text)"))
            }
        }
    }
}

/// The gateway binary in its own process (its RSS is then its own): twenty concurrent bodies of 8 MiB against a
/// body budget of 32 MiB. Without the budget each body in flight costs several times its size at once.
@Suite struct BodyBudgetProcessTests {
    static func rssMB(_ pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return nil }
        return kb / 1024
    }

    @Test func concurrentLargeBodiesStayWithinTheBudget() async throws {
        guard FileManager.default.isExecutableFile(atPath: DescriptorExhaustionTests.binary) else {
            Issue.record("build the switchyard product first: \(DescriptorExhaustionTests.binary) is missing")
            return
        }
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("budget-\(getpid()).yaml")
        try """
        listen: {host: 127.0.0.1, port: 0, body_budget_bytes: 33554432}
        max_body_bytes: 16777216
        providers:
          mock: {kind: mock}
        models:
          gpt-4o-mini: {provider: mock, exact_cache: false, semantic_cache: false}
        """.write(to: config, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: config) }
        let (process, port) = try await DescriptorExhaustionTests.launch(DescriptorExhaustionTests.binary, [
            "serve", "--config", config.path, "--no-embeddings", "--mock-latency-scale", "0", "--log-level", "error",
        ])
        defer {
            process.terminate()
            process.waitUntilExit()
        }
        let idle = try #require(Self.rssMB(process.processIdentifier))
        let text = String(repeating: "a", count: 8 << 20)
        let body = #"{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user","content":"\#(text)"}]}"#
        let peak = Locked(idle)
        let sampling = Task {
            while !Task.isCancelled {
                if let rss = Self.rssMB(process.processIdentifier) { peak.withLock { $0 = max($0, rss) } }
                try? await Task.sleep(for: .milliseconds(20))
            }
        }
        let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<20 { group.addTask { try await send("http://127.0.0.1:\(port)/v1/chat/completions", body: body).status } }
            var statuses: [Int] = []
            for try await status in group { statuses.append(status) }
            return statuses
        }
        sampling.cancel()
        // Every request is answered: served, or refused with 503 once it waited for the budget.
        #expect(statuses.allSatisfy { $0 == 200 || $0 == 503 }, "\(statuses)")
        #expect(statuses.contains(200))
        let grew = peak.withLock { $0 } - idle
        // Four bodies of 8 MiB fit the budget at once; gateway and in-process mock hold a few copies of each.
        #expect(grew < 400, "RSS grew by \(grew) MB for 20 concurrent 8 MiB bodies under a 32 MiB budget")
    }
}
