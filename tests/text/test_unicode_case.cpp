// Python's str.lower() and str.capitalize() as the task presets use them, against what CPython
// 3.11 printed for these strings (full mappings: "ß" -> "Ss", "İ" -> "i̇"; titlecase digraphs;
// the final-sigma rule with case-ignorable characters on either side).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "scalpel/text/unicode.hpp"

namespace scalpel::text {
namespace {

// [input, input.lower(), input.capitalize()], written by /usr/bin/python3 (3.11.2, Unicode 14).
const char* const kCases[] = {
    "[\"the man in the Red shirt\", \"the man in the red shirt\", \"The man in the red shirt\"]",
    "[\"\\u00c9COLE Normale\", \"\\u00e9cole normale\", \"\\u00c9cole normale\"]",
    "[\"\\u00dftra\\u00dfe\", \"\\u00dftra\\u00dfe\", \"Sstra\\u00dfe\"]",
    "[\"\\u01c6ungla\", \"\\u01c6ungla\", \"\\u01c5ungla\"]",
    "[\"\\u039f\\u0394\\u039f\\u03a3\", \"\\u03bf\\u03b4\\u03bf\\u03c2\", \"\\u039f\\u03b4\\u03bf\\u03c2\"]",
    "[\"\\u039f\\u0394\\u039f\\u03a3 \\u039f\\u0394\\u039f\\u03a3.\", \"\\u03bf\\u03b4\\u03bf\\u03c2 \\u03bf\\u03b4\\u03bf\\u03c2.\", \"\\u039f\\u03b4\\u03bf\\u03c2 \\u03bf\\u03b4\\u03bf\\u03c2.\"]",
    "[\"\\u0391\\u03a3'\\u0391\", \"\\u03b1\\u03c3'\\u03b1\", \"\\u0391\\u03c3'\\u03b1\"]",
    "[\"\\u03a3\", \"\\u03c3\", \"\\u03a3\"]",
    "[\"a\\u03a3\", \"a\\u03c2\", \"A\\u03c2\"]",
    "[\"\\u0130stanbul\", \"i\\u0307stanbul\", \"\\u0130stanbul\"]",
    "[\"\\ufb01ne ligature\", \"\\ufb01ne ligature\", \"Fine ligature\"]",
    "[\"'Hello World\", \"'hello world\", \"'hello world\"]",
    "[\" leading\", \" leading\", \" leading\"]",
    "[\"\", \"\", \"\"]",
    "[\"\\u01c5X\", \"\\u01c6x\", \"\\u01c5x\"]",
    "[\"\\u03a3\\u0391\\u03a3:\\u03a3\", \"\\u03c3\\u03b1\\u03c3:\\u03c2\", \"\\u03a3\\u03b1\\u03c3:\\u03c2\"]",
    "[\"\\u0149 apostrophe n\", \"\\u0149 apostrophe n\", \"\\u02bcN apostrophe n\"]",
    "[\"\\u216b roman\", \"\\u217b roman\", \"\\u216b roman\"]",
    "[\"\\uff21\\uff22\\uff23 fullwidth\", \"\\uff41\\uff42\\uff43 fullwidth\", \"\\uff21\\uff42\\uff43 fullwidth\"]",
    "[\"\\u0559a\\u03a3\", \"\\u0559a\\u03c2\", \"\\u0559a\\u03c2\"]",
    "[\"a\\u0301\\u03a3\\u0301\", \"a\\u0301\\u03c2\\u0301\", \"A\\u0301\\u03c2\\u0301\"]"};

TEST(UnicodeCase, LowerAndCapitalizeMatchCPython) {
  for (const char* row : kCases) {
    const auto c = nlohmann::json::parse(row);
    const auto s = c[0].get<std::string>();
    EXPECT_EQ(python_lower(s), c[1].get<std::string>()) << row;
    EXPECT_EQ(python_capitalize(s), c[2].get<std::string>()) << row;
  }
}

}  // namespace
}  // namespace scalpel::text
