// A JAX-WS client as Java users build one: `wsimport -extension -p polyport.client
// URL?wsdl` generates the stubs, this calls them over both ports and prints what it got,
// one line per step, for test_soap_java.py to check.
import java.net.URL;
import java.util.List;

import polyport.client.Fault_Exception;
import polyport.client.Polyport;
import polyport.client.PolyportPortType;
import polyport.client.Post;

public class Client {
    public static void main(String[] args) throws Exception {
        Polyport service = new Polyport(new URL(args[0]));
        for (PolyportPortType port : List.of(service.getPolyportSoap11(), service.getPolyportSoap12())) {
            System.out.println("user " + port.getUser("123").getUsername());
            Post p = port.createPost(null, "From Java", null, "123", List.of("jvm", "jax-ws"));
            System.out.println("created " + p.getId() + " v" + p.getVersion() + " " + p.getTags());
            Post u = port.updatePost(p.getId(), 1L, null, "edited", null, List.of());
            System.out.println("updated v" + u.getVersion() + " " + u.getBody());
            try {
                port.getPost("nope");
                System.out.println("no fault");
            } catch (Fault_Exception e) {
                System.out.println("fault " + e.getFaultInfo().getCode());
            }
        }
    }
}
