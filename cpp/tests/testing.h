// Minimal checks for the facelab C++ tests: a failed CHECK prints file:line and the message, and the test exits 1.
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#define CHECK(cond, msg)                                                                     \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::ostringstream os_;                                                               \
      os_ << msg;                                                                           \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed: %s\n", __FILE__, __LINE__, #cond,      \
                   os_.str().c_str());                                                      \
      std::exit(1);                                                                         \
    }                                                                                       \
  } while (0)

namespace ftest {

inline std::vector<float> readBin(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  CHECK(in, "cannot read " << path);
  std::vector<float> v(static_cast<size_t>(in.tellg()) / sizeof(float));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(v.size() * sizeof(float)));
  return v;
}

inline nlohmann::json readJson(const std::string& path) {
  std::ifstream in(path);
  CHECK(in, "cannot read " << path);
  return nlohmann::json::parse(in);
}

inline float maxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  CHECK(a.size() == b.size(), "sizes differ: " << a.size() << " vs " << b.size());
  float m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    float d = std::fabs(a[i] - b[i]);
    if (!(d <= m)) m = d;   // NaN propagates
  }
  return m;
}

}  // namespace ftest
