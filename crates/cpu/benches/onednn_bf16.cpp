// Why: the oneDNN / OpenBLAS side of the measurement in crates/cpu/src/bf16/mod.rs (not part of
// the build). apt-get install -y libopenblas-dev libdnnl-dev;
// g++ -O2 -o /tmp/onednn_bf16 crates/cpu/benches/onednn_bf16.cpp -lopenblas -ldnnl;
// OMP_NUM_THREADS=2 /tmp/onednn_bf16. Debian's OpenBLAS has no cblas_sbgemm (built without
// BUILD_BFLOAT16), so that column stays 0.
#include <cblas.h>
#include <oneapi/dnnl/dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cstdint>
using namespace dnnl;
static double now(){return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();}
static uint16_t tobf(float f){uint32_t b;memcpy(&b,&f,4);return (b+0x7fff+((b>>16)&1))>>16;}
template<class F> double timeit(F f, double flops){ f(); double best=1e30; for(int r=0;r<5;r++){int it=0;double t0=now(),t;do{f();it++;t=now()-t0;}while(t<0.3); if(t/it<best)best=t/it;} return flops/best/1e9;}
int main(int argc,char**argv){
  int shapes[][3]={{1024,576,576},{1024,576,1536},{1024,1536,576},{256,576,1536},{1,576,1536},{1024,576,49152}};
  engine eng(engine::kind::cpu,0); stream s(eng);
  for(auto&sh:shapes){int m=sh[0],k=sh[1],n=sh[2]; double fl=2.0*m*n*k;
    std::vector<float> a(m*k),b(k*n),c(m*n); for(auto&x:a)x=(rand()%100)/50.0f-1; for(auto&x:b)x=(rand()%100)/50.0f-1;
    std::vector<uint16_t> ab(m*k),bb(k*n); for(size_t i=0;i<a.size();i++)ab[i]=tobf(a[i]); for(size_t i=0;i<b.size();i++)bb[i]=tobf(b[i]);
    // B stored as W [n,k] row-major (kiln's x·Wᵀ): TransB.
    double g_s=timeit([&]{cblas_sgemm(CblasRowMajor,CblasNoTrans,CblasTrans,m,n,k,1,a.data(),k,b.data(),k,0,c.data(),n);},fl);
    double g_sb=0;
    memory::desc amd({m,k},memory::data_type::bf16,memory::format_tag::ab);
    memory::desc bmd({k,n},memory::data_type::bf16,memory::format_tag::ba);
    memory::desc bany({k,n},memory::data_type::bf16,memory::format_tag::any);
    memory::desc cmd({m,n},memory::data_type::f32,memory::format_tag::ab);
    memory am(amd,eng,ab.data()), bm(bmd,eng,bb.data()), cm(cmd,eng,c.data());
    auto pd=matmul::primitive_desc(matmul::desc(amd,bmd,cmd),eng); matmul mm(pd);
    double g_dn=timeit([&]{mm.execute(s,{{DNNL_ARG_SRC,am},{DNNL_ARG_WEIGHTS,bm},{DNNL_ARG_DST,cm}});s.wait();},fl);
    // pre-packed weights (format any), as a framework with reused weights would.
    auto pd2=matmul::primitive_desc(matmul::desc(amd,bany,cmd),eng); matmul mm2(pd2);
    memory bp(pd2.weights_desc(),eng); reorder(bm,bp).execute(s,bm,bp); s.wait();
    double g_dp=timeit([&]{mm2.execute(s,{{DNNL_ARG_SRC,am},{DNNL_ARG_WEIGHTS,bp},{DNNL_ARG_DST,cm}});s.wait();},fl);
    printf("%5d x %5d x %5d  openblas sgemm %7.1f  sbgemm %7.1f  onednn bf16 %7.1f  onednn bf16 packedW %7.1f  (%s)\n",m,k,n,g_s,g_sb,g_dn,g_dp,pd2.impl_info_str());
  }
}
