#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SwitchyardModels

/// One evaluation prompt: which set it belongs to, its text, and whether each model answered it correctly.
public struct RoutingExample: Sendable, Hashable {
    /// `gsm8k` or `mmlu`.
    public var dataset: String
    /// MMLU's subject (`gsm8k` for GSM8K).
    public var domain: String
    public var prompt: String
    public var weakCorrect: Bool
    public var strongCorrect: Bool
    /// GSM8K only: the two models' answers (for the answer scorer).
    public var weakResponse: String?
    public var strongResponse: String?

    public init(dataset: String, domain: String, prompt: String, weakCorrect: Bool, strongCorrect: Bool,
                weakResponse: String? = nil, strongResponse: String? = nil) {
        self.dataset = dataset
        self.domain = domain
        self.prompt = prompt
        self.weakCorrect = weakCorrect
        self.strongCorrect = strongCorrect
        self.weakResponse = weakResponse
        self.strongResponse = strongResponse
    }
}

public struct RoutingDataError: Error, CustomStringConvertible {
    public var description: String
}

/// Reads RouteLLM's GSM8K and MMLU correctness files (`../shared/data/routing/routellm`), without the prompts RouteLLM
/// lists as contaminated (they overlap its routers' training data).
public enum RoutingData {
    public static let weakModel = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    public static let strongModel = "gpt-4-1106-preview"

    public static func load(directory: String) throws(RoutingDataError) -> [RoutingExample] {
        let base = directory.hasSuffix("/routellm") ? directory : directory + "/routellm"
        var examples: [RoutingExample] = []
        for (dataset, file) in [("gsm8k", "gsm8k_responses.csv"), ("mmlu", "mmlu_responses.csv")] {
            let excluded = try contaminated("\(base)/\(dataset)_contaminated_prompts.jsonl")
            let rows = try CSV.parse(try read("\(base)/\(file)"))
            guard let header = rows.first else { throw RoutingDataError(description: "\(file) is empty") }
            func column(_ name: String) throws(RoutingDataError) -> Int {
                guard let index = header.firstIndex(of: name) else {
                    throw RoutingDataError(description: "\(file) has no column '\(name)'")
                }
                return index
            }
            let prompt = try column("prompt"), weak = try column(weakModel), strong = try column(strongModel)
            let domain = header.firstIndex(of: "domain")
            let weakText = header.firstIndex(of: weakModel + "_response"), strongText = header.firstIndex(of: strongModel + "_response")
            for row in rows.dropFirst() where row.count == header.count && !excluded.contains(row[prompt]) {
                examples.append(RoutingExample(dataset: dataset, domain: domain.map { row[$0] } ?? dataset, prompt: row[prompt],
                                               weakCorrect: row[weak] == "True", strongCorrect: row[strong] == "True",
                                               weakResponse: weakText.map { row[$0] }, strongResponse: strongText.map { row[$0] }))
            }
        }
        return examples
    }

    static func read(_ path: String) throws(RoutingDataError) -> String {
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw RoutingDataError(description: "cannot read \(path) (the evaluation data lives in ../shared/data/routing)")
        }
    }

    static func contaminated(_ path: String) throws(RoutingDataError) -> Set<String> {
        var prompts = Set<String>()
        for line in try read(path).split(separator: "\n") where !line.isEmpty {
            guard let value = try? JSONValue.parse(Array(line.utf8)), let prompt = value["eval_prompt"]?.stringValue else {
                throw RoutingDataError(description: "\(path): a line is not {\"eval_prompt\": ...}")
            }
            prompts.insert(prompt)
        }
        return prompts
    }
}

/// The CSV reader, for tests.
public enum CSVProbe {
    public static func parse(_ text: String) throws(RoutingDataError) -> [[String]] { try CSV.parse(text) }
}

/// RFC 4180 CSV: commas, quoted fields with doubled quotes, and line breaks inside quotes.
enum CSV {
    static func parse(_ text: String) throws(RoutingDataError) -> [[String]] {
        var rows: [[String]] = []
        var row: [String] = []
        var field: [UInt8] = []
        var quoted = false
        var bytes = Array(text.utf8)[...]
        func endField() {
            row.append(String(decoding: field, as: UTF8.self))
            field.removeAll(keepingCapacity: true)
        }
        while let byte = bytes.popFirst() {
            if quoted {
                if byte == UInt8(ascii: "\"") {
                    if bytes.first == UInt8(ascii: "\"") {
                        field.append(byte)
                        bytes = bytes.dropFirst()
                    } else {
                        quoted = false
                    }
                } else {
                    field.append(byte)
                }
                continue
            }
            switch byte {
            case UInt8(ascii: "\""): quoted = true
            case UInt8(ascii: ","): endField()
            case UInt8(ascii: "\r"): continue
            case UInt8(ascii: "\n"):
                endField()
                rows.append(row)
                row.removeAll()
            default: field.append(byte)
            }
        }
        if quoted { throw RoutingDataError(description: "an unterminated quoted field") }
        if !field.isEmpty || !row.isEmpty {
            endField()
            rows.append(row)
        }
        return rows
    }
}
