// facelab engine config: one JSON file (written by `facelab serve-config`, schema in cpp/README.md).
#pragma once
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace facelab {

struct ConfigError : std::runtime_error { using std::runtime_error::runtime_error; };

// Preprocessing overrides; unset fields come from the model's metadata.
struct PreprocessOverride {
  std::optional<std::vector<float>> mean, std;
  std::optional<std::string> color_order;
  bool operator==(const PreprocessOverride& o) const { return mean == o.mean && std == o.std && color_order == o.color_order; }
};

struct ModelConfig {
  std::string path;                          // absolute (relative paths are resolved against the config's folder)
  std::string sha256;                        // empty: not checked
  PreprocessOverride preprocess;
  int stride = 4;                            // micro: frames between two inferences once the buffer is full
  std::map<std::string, float> thresholds;   // au: per-AU thresholds (override the metadata)
  double fps = 30.0;                         // spotting: frame rate of the feature stream
  // true when a change between a and b needs a new session (the file or its preprocessing changed)
  static bool needsReload(const ModelConfig& a, const ModelConfig& b) {
    return a.path != b.path || a.sha256 != b.sha256 || !(a.preprocess == b.preprocess);
  }
};

struct SessionConfig {
  int intra_op = 1;
  int inter_op = 1;
  bool operator==(const SessionConfig& o) const { return intra_op == o.intra_op && inter_op == o.inter_op; }
};

struct FlowSpotterConfig {
  double threshold = 2.0;   // mean optical-flow magnitude (pixels per frame) that counts as motion
  int min_frames = 3, max_frames = 120;
};

// "face": raw frames -> dlib detection + 68 landmarks + template alignment (cpp/include/facelab/face_front_end.h).
// Without a face section (or with detect false) every frame is taken as a face crop.
struct FaceConfig {
  bool detect = false;
  int every = 1;                  // run the detector every N frames; landmarks are re-fitted on every frame
  std::string templates;          // JSON written by cpp/tools/face_templates.py (from facelab.face.align)
  std::string template_name = "macro";   // template name or task (TASK_TEMPLATES)
  std::string shape_predictor;    // empty: $FACELAB_FACE_MODELS, then /usr/share/dlib
  int upsample = -1;              // -1: 1 when the short side is < 400 px, else 0 (as Python)
  double min_score = 0.1;
  int max_side = 1280;
};

struct EngineConfig {
  std::string file;                          // where it was read from
  SessionConfig threads;
  std::map<std::string, ModelConfig> models; // task -> model ("macro", "micro", "au", "spotting")
  FlowSpotterConfig flow;
  FaceConfig face;
};

// Read and check a config file; throws ConfigError naming the file and the key.
EngineConfig loadConfig(const std::string& path);
// Parse config text; relative model paths are resolved against base_dir.
EngineConfig parseConfig(const std::string& text, const std::string& base_dir, const std::string& name = "<config>");

}  // namespace facelab
