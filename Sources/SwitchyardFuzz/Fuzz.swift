#if FUZZING
import CFuzzerDriver
#endif
import HTTPEdge
import NIOCore
import NIOHTTP1
import Redis
import ServerSentEvents
import SwitchyardModels

#if canImport(Glibc)
import Glibc
#endif

/// Fuzz targets for every parser that reads bytes from outside: the edge's request parser, the upstream client's
/// response parser, the JSON reader, the SSE decoder, both APIs' request decoders, and the Redis reply parser.
///
/// Built for libFuzzer by `scripts/fuzz.sh` (`-sanitize=fuzzer,address -DFUZZING`); built plainly (as `swift build`
/// does), the same binary replays files, so a crashing input can be rerun under a debugger. The target is
/// chosen by `SWITCHYARD_FUZZ_TARGET`. Besides "no crash, no hang", the incremental parsers must give the same parts
/// whether the input arrives whole or split at a point the input itself chooses.
enum FuzzTarget: String, CaseIterable {
    case requestParser = "request-parser"
    case responseParser = "response-parser"
    case json
    case sse
    case openAIRequest = "openai-request"
    case anthropicRequest = "anthropic-request"
    case resp

    static let selected: FuzzTarget = {
        let name = getenv("SWITCHYARD_FUZZ_TARGET").map { String(cString: $0) } ?? ""
        guard let target = FuzzTarget(rawValue: name) else {
            let names = FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")
            printError("set SWITCHYARD_FUZZ_TARGET to one of: \(names)")
            exit(2)
        }
        return target
    }()

    func run(_ bytes: UnsafeRawBufferPointer) {
        switch self {
        case .requestParser: Self.requestParser(bytes)
        case .responseParser: Self.responseParser(bytes)
        case .json: _ = try? JSONValue.parse(bytes)
        case .sse: Self.sse(bytes)
        case .openAIRequest:
            if let json = try? JSONValue.parse(bytes) { _ = try? OpenAIFormat.parseRequest(json) }
        case .anthropicRequest:
            if let json = try? JSONValue.parse(bytes) { _ = try? AnthropicFormat.parseRequest(json) }
        case .resp: Self.resp(bytes)
        }
    }

    /// Where the input is cut in two for the split run: chosen by its first byte, so the fuzzer explores cuts.
    static func cut(_ bytes: UnsafeRawBufferPointer) -> Int {
        guard let first = bytes.first, bytes.count > 1 else { return 0 }
        return Int(first) * bytes.count / 256
    }

    /// Runs `parse` on the input whole and cut in two; a difference is a bug (the fuzzer reports the crash).
    static func wholeAndSplitAgree<T: Equatable>(_ bytes: UnsafeRawBufferPointer, _ name: String,
                                                 _ parse: ([UnsafeRawBufferPointer]) -> T) {
        let cut = cut(bytes)
        let whole = parse([bytes])
        let split = parse([UnsafeRawBufferPointer(rebasing: bytes[..<cut]), UnsafeRawBufferPointer(rebasing: bytes[cut...])])
        if whole != split { fatalError("\(name): whole \(whole) != split at \(cut) \(split)") }
    }

    /// The parts an incremental parser gives for `pieces` fed one after the other, as text (body slices joined),
    /// ending with its error if it throws. `step` parses one message from the buffer, reporting each part.
    static func parts(_ pieces: [UnsafeRawBufferPointer],
                      step: (inout ByteBuffer, (String) -> Void) throws -> Bool,
                      finish: ((String) -> Void) -> Void = { _ in }) -> [String] {
        var buffer = ByteBuffer()
        var seen: [String] = []
        for piece in pieces {
            buffer.writeBytes(piece)
            do {
                while try step(&buffer, { seen.append($0) }), buffer.readableBytes > 0 {}
            } catch {
                seen.append("error \(error)")
                return joined(seen)
            }
        }
        finish { seen.append($0) }
        return joined(seen)
    }

    static func requestParser(_ bytes: UnsafeRawBufferPointer) {
        wholeAndSplitAgree(bytes, "request parser") { pieces in
            var parser = HTTPRequestParser(maximumChunkedBodyBytes: 1 << 16)
            return parts(pieces, step: { buffer, report in
                try parser.parse(&buffer) { part in
                    switch part {
                    case .head(let head, let keepAlive): report("head \(head.method) \(head.uri) \(keepAlive) \(head.headers.count)")
                    case .body(let body): report("body \(body.readableBytes)")
                    case .end: report("end")
                    }
                }
            })
        }
    }

    static func responseParser(_ bytes: UnsafeRawBufferPointer) {
        wholeAndSplitAgree(bytes, "response parser") { pieces in
            var parser = HTTPResponseParser()
            return parts(pieces, step: { buffer, report in
                try parser.parse(&buffer) { part in
                    switch part {
                    case .head(let head): report("head \(head.status.code) \(head.headers.count)")
                    case .body(let body): report("body \(body.readableBytes)")
                    case .end: report("end")
                    }
                }
            }, finish: { report in parser.finish { _ in report("end") } })
        }
    }

    static func sse(_ bytes: UnsafeRawBufferPointer) {
        func events(_ pieces: [UnsafeRawBufferPointer]) -> String {
            var decoder = SSEDecoder(maximumEventSize: 1 << 12)
            var seen: [String] = []
            for piece in pieces {
                do {
                    for event in try decoder.feed(ByteBuffer(bytes: piece)) {
                        seen.append("\(event.event ?? "-") \(event.dataString.utf8.count)")
                    }
                } catch {
                    seen.append("error")
                    break
                }
            }
            return seen.joined(separator: "|")
        }
        wholeAndSplitAgree(bytes, "SSE decoder", events)
    }

    /// The Redis reply parser, with small bounds so that the fuzzer reaches them.
    static func resp(_ bytes: UnsafeRawBufferPointer) {
        wholeAndSplitAgree(bytes, "RESP parser") { pieces -> [String] in
            var parser = RESPParser(limits: .init(line: 256, bulk: 1024, elements: 64, depth: 8))
            var seen: [String] = []
            for piece in pieces {
                parser.append(ByteBuffer(bytes: piece))
                do {
                    while let value = try parser.next() { seen.append("\(value)") }
                } catch {
                    seen.append("error \(error)")
                    return seen
                }
            }
            return seen
        }
    }

    /// Body slices are joined: how bytes were split into parts is not part of the answer.
    static func joined(_ parts: [String]) -> [String] {
        var merged: [String] = []
        var body = 0
        for part in parts {
            if part.hasPrefix("body "), let count = Int(part.dropFirst(5)) {
                body += count
                continue
            }
            if body > 0 {
                merged.append("body \(body)")
                body = 0
            }
            merged.append(part)
        }
        if body > 0 { merged.append("body \(body)") }
        return merged
    }
}

/// To standard error (`stderr` itself is a global that strict concurrency will not read).
func printError(_ message: String) {
    let line = message + "\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

#if FUZZING
/// The entry point libFuzzer's own `main` calls, when the linker picks that one.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    FuzzTarget.selected.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

/// libFuzzer's driver, run from this `main` (SwiftPM links every executable's own entry point, so libFuzzer's `main`
/// stays out).
@main struct Fuzz {
    static func main() {
        _ = FuzzTarget.selected
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in
            guard let data else { return 0 }
            FuzzTarget.selected.run(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        })
    }
}
#else
/// Replays inputs: `SWITCHYARD_FUZZ_TARGET=json switchyard-fuzz FILE...`.
@main struct Replay {
    static func main() {
        let target = FuzzTarget.selected
        for path in CommandLine.arguments.dropFirst() {
            guard let file = fopen(path, "rb") else {
                printError("cannot read \(path)")
                exit(1)
            }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = fread(&chunk, 1, chunk.count, file)
                if count <= 0 { break }
                bytes.append(contentsOf: chunk[0..<count])
            }
            fclose(file)
            bytes.withUnsafeBytes { target.run($0) }
        }
        print("replayed \(CommandLine.arguments.count - 1) inputs on \(target.rawValue)")
    }
}
#endif
