// FrameBuffer: the sliding window of the micro-expression engine.
#pragma once
#include <cstddef>
#include <vector>

namespace facelab {

// Keeps the last `length` frames (each `frame_size` floats). push() returns true when a window is due: the buffer is
// full and `stride` frames have been pushed since the previous window (the first window is due on the frame that fills
// the buffer). reset() forgets everything (a new face track).
class FrameBuffer {
 public:
  FrameBuffer(size_t length = 16, size_t stride = 1, size_t frame_size = 0);
  bool push(const float* frame);
  bool push(const std::vector<float>& frame);
  void reset();
  // The window, oldest frame first, into dst (length * frame_size floats). Requires full().
  void window(float* dst) const;
  bool full() const { return count_ >= length_; }
  size_t size() const { return count_ < length_ ? count_ : length_; }
  size_t pushed() const { return count_; }   // frames since the last reset
  size_t length() const { return length_; }
  size_t stride() const { return stride_; }
  size_t frameSize() const { return frame_size_; }
  void setStride(size_t stride);              // applies from the next push
  void configure(size_t length, size_t frame_size);   // new geometry: resets

 private:
  size_t length_, stride_, frame_size_;
  size_t count_ = 0, head_ = 0, last_due_ = 0;
  std::vector<float> data_;
};

}  // namespace facelab
